"""`probe cka`: CKA between blocks and timesteps of one feature file, or between two.

:func:`run_measure` is the body it shares with `probe similarity`: the checks on --out,
the outputs written all or nothing, and what is printed."""
from __future__ import annotations

import argparse
import os
import warnings
from typing import Any, Callable

from ..errors import ProbeError
from .common import add_run_flags, add_selection, refuse_existing, run_options, selection

FORMATS = (".png", ".pdf", ".svg", ".jpg", ".jpeg")
# probe.measures.core.KERNELS and probe.measures.result.ACROSS, spelled out because importing
# probe.measures costs torch, and every `probe ... --help` builds this parser
# (tests/test_start.py checks that they agree)
KERNELS = ("linear", "rbf")
ACROSS = ("blocks", "timesteps", "logsnr", "all")
ACROSS_HELP = ("heatmap panels: one per t (blocks), one per block (timesteps), one per pair of "
               "blocks on the log-SNR axis (logsnr: files of different families; B's t "
               "default to those nearest A's in log-SNR, B's blocks to all), or one of all "
               "keys; default blocks (timesteps when there is one block)")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "cka", help="CKA across blocks, timesteps and models, with heatmaps",
        description="CKA between the (t, block) features of a file from `probe extract`, or "
                    "between two such files (samples paired by id).  Writes the matrix as CSV "
                    "and JSON next to the heatmap, and a line plot of CKA against t.")
    add_inputs(p)
    p.add_argument("--across", choices=ACROSS, help=ACROSS_HELP)
    p.add_argument("--minibatch", type=int, metavar="N",
                   help="minibatch CKA with batches of N samples (unbiased HSIC summed over "
                        "batches); default: one full batch")
    p.add_argument("--no-shuffle", action="store_true",
                   help="minibatches in file order instead of random samples of the file")
    p.add_argument("--kernel", choices=KERNELS, default="linear")
    p.add_argument("--sigma", type=float, default=1.0,
                   help="RBF bandwidth as a fraction of the median pairwise distance (default 1)")
    est = p.add_mutually_exclusive_group()
    est.add_argument("--unbiased", dest="unbiased", action="store_const", const=True,
                     help="unbiased HSIC (default with --minibatch)")
    est.add_argument("--biased", dest="unbiased", action="store_const", const=False,
                     help="biased HSIC of Kornblith et al. 2019 (default for a full batch)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="precision of the feature product X X^T; the rest is float64")
    p.add_argument("--line-blocks", nargs="+", metavar="BLOCK",
                   help="blocks of the CKA-against-t plot (default: up to 8 of them)")
    p.add_argument("--line-ref", metavar="REF",
                   help="what each (t, block) is compared with in the line plot: tT (same block "
                        "at T; default the smallest t), same (same key in B), tT/BLOCK, or logsnr "
                        "(B's key of nearest log-SNR; the default with --across logsnr)")
    p.add_argument("--out", default="cka.png", metavar="FILE.png",
                   help="heatmap path; the CSV, JSON and line plot go next to it (default cka.png)")
    add_run_flags(p, seed_what="the minibatch shuffle", device_default="cpu",
                  overwrite="the outputs (heatmap, CSV, JSON, line plot)")
    p.set_defaults(func=run)


def add_inputs(p: argparse.ArgumentParser) -> None:
    """The files and the keys of each: rows from A, columns from B (or A again)."""
    p.add_argument("a", metavar="A.h5", help="feature file (rows)")
    p.add_argument("b", metavar="B.h5", nargs="?", help="second feature file (columns); default A")
    add_selection(p, what=" of A (the rows)")
    add_selection(p, suffix="-b", what=" of B (the columns; default: A's selection, in B)")


def _comma(values):
    return None if values is None else [w for v in values for w in v.split(",") if w]


def _outputs(stem, ext):
    return [stem + ".csv", stem + ".json", stem + ext, f"{stem}_line{ext}", f"{stem}_stats.csv"]


def run(args: argparse.Namespace) -> int:
    from ..measures import cka

    def compute(rows, cols):
        return cka(args.a, args.b, rows=rows, cols=cols, across=args.across,
                   minibatch=args.minibatch, kernel=args.kernel, sigma=args.sigma,
                   unbiased=args.unbiased, shuffle=not args.no_shuffle, seed=args.seed,
                   dtype=args.dtype, run=run_options(args))

    return run_measure(args, compute, _summary)


def _summary(result):
    e, m = result.estimator, result.matrix
    batches = f"minibatch {e['minibatch']} ({e['batches']} batches)" if e["batches"] > 1 else "full batch"
    return [f"CKA over {result.num_samples} samples ({e['kernel']}, "
            f"{'unbiased' if e['unbiased'] else 'biased'} HSIC, {batches}): "
            f"{m.shape[0]} x {m.shape[1]} keys, min {m.min():.3f}, max {m.max():.3f}"]


def run_measure(args: argparse.Namespace, compute: Callable[[Any, Any], Any],
                summary: Callable[[Any], list[str]], minus_null: bool = False) -> int:
    """The body of `probe cka` and `probe similarity`: check --out, compute the result with
    ``compute(rows, cols)`` (the Selections of the flags), print its warnings, write the
    outputs all or nothing, and print the lines of ``summary(result)``."""
    from ..options import Selection

    stem, ext = os.path.splitext(args.out)
    if ext.lower() not in FORMATS:
        raise ProbeError(f"--out {args.out}: the plot needs one of the extensions {', '.join(FORMATS)}")
    if os.path.isdir(args.out):
        raise ProbeError(f"--out {args.out} is a directory: give a file name such as {args.out}/plot.png")
    folder = os.path.dirname(os.path.abspath(args.out))
    refuse_existing(_outputs(stem, ext), args.overwrite)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = compute(Selection(*selection(args)),
                         Selection(*selection(args, "_b")))
    for w in caught:
        print(f"probe: warning: {w.message}")
    drawn = {i for panel in result.panels() for i in panel.rows}
    undrawn = [lab for i, lab in enumerate(result.row_labels) if i not in drawn]
    if undrawn:
        print(f"probe: note: no heatmap panel for {', '.join(undrawn)} (nothing to pair them with "
              f"across {result.across}); they are in the CSV, and --across all draws every key")
    line_blocks = _line_blocks(args, result)
    written = _write_outputs(result, folder, stem, ext, line_blocks, args.line_ref, minus_null)
    for line in summary(result):
        print(line)
    print("wrote " + ", ".join(written))
    return 0


def _line_blocks(args, result):
    """The blocks of the CKA-against-t plot, or None for no plot.  Options the user gave are
    checked here, before anything is written, so a bad one leaves no output behind."""
    from ..report.measures import default_line_blocks

    several_t = len({t for t, _ in result.rows}) > 1
    asked = args.line_blocks is not None or args.line_ref is not None
    if not (several_t or asked):
        return None
    blocks = _comma(args.line_blocks) or default_line_blocks(result)
    try:
        result.line(blocks, args.line_ref)
    except ProbeError as e:
        if asked:
            raise
        print(f"probe: no line plot ({e})")
        return None
    return blocks


def _write_outputs(result, folder, stem, ext, line_blocks, line_ref, minus_null=False):
    """CSV, JSON, heatmap, line plot and the stats CSV (with a null or an interval), all or
    nothing: each is written under a temporary name and renamed only once every one of
    them has been written."""
    import contextlib

    from ..files import atomic_path
    from ..report.measures import heatmaps, line_plot

    made_folder = not os.path.isdir(folder)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise ProbeError(f"cannot create the folder {folder} ({e.strerror}): choose another --out") from None
    if not os.access(folder, os.W_OK):
        raise ProbeError(f"cannot write to {folder}: choose another --out")
    line_path, stats_path = f"{stem}_line{ext}", f"{stem}_stats.csv"
    finals = [stem + ".csv", stem + ".json", stem + ext] + ([line_path] if line_blocks else [])
    finals += [stats_path] if result.has_stats else []
    try:
        # each temporary file is renamed when the stack closes without error, removed otherwise
        with contextlib.ExitStack() as stack:
            tmp = {f: stack.enter_context(atomic_path(f)) for f in finals}
            result.to_csv(tmp[finals[0]])
            result.to_json(tmp[finals[1]])
            heatmaps(result, tmp[finals[2]], minus_null=minus_null)
            if line_blocks:
                line_plot(result, tmp[line_path], line_blocks, line_ref)
            if result.has_stats:
                result.to_stats_csv(tmp[stats_path])
    except BaseException as e:
        if made_folder and not os.listdir(folder):
            os.rmdir(folder)
        if isinstance(e, OSError):
            raise ProbeError(f"cannot write the {result.label} outputs next to {stem + ext} "
                             f"({e.strerror}): choose another --out") from None
        raise
    # outputs of an earlier run at this --out would not match this matrix
    for stale, made in ((line_path, line_blocks), (stats_path, result.has_stats)):
        if not made and os.path.exists(stale):
            os.remove(stale)
    return finals
