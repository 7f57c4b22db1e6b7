"""`probe similarity`: CKA or another similarity measure between blocks and timesteps of
one feature file, or between two, with a permutation null and bootstrap intervals."""
from __future__ import annotations

import argparse
from typing import Any

from ..errors import ProbeError
from .cka import ACROSS, ACROSS_HELP, add_inputs, run_measure
from .common import add_run_flags, run_options

# probe.measures.result.METRICS and the choices of probe.measures.pairs, spelled out
# because importing probe.measures costs torch (tests/measures/test_similarity_cli.py
# checks that they agree)
METRICS = ("cka", "cka-unbiased", "cka-rbf", "mutual-knn", "cknna", "rsa", "procrustes", "svcca")
RSA_CORR = ("spearman", "pearson")
RDMS = ("correlation", "euclidean")
MAX_SAMPLES = 8192


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "similarity", help="CKA, mutual k-NN, CKNNA, RSA, Procrustes or SVCCA, with p-values "
                           "and bootstrap intervals",
        description="A similarity measure between the (t, block) features of a file from "
                    "`probe extract`, or between two such files (samples paired by id), "
                    "optionally with a permutation null and bootstrap intervals.  Writes "
                    "what `probe cka` writes, and the null and intervals as FILE_stats.csv.")
    add_inputs(p)
    g = p.add_argument_group("the measure")
    g.add_argument("--metric", choices=METRICS, default="cka",
                   help="the measure (default cka; procrustes is a distance: 0 = the same)")
    g.add_argument("--k", type=int, default=10,
                   help="neighbours per sample for mutual-knn and cknna (default 10)")
    g.add_argument("--sigma", type=float, default=1.0,
                   help="cka-rbf bandwidth as a fraction of the median pairwise distance (default 1)")
    g.add_argument("--rsa-corr", choices=RSA_CORR, default="spearman",
                   help="rsa: how the two RDMs are correlated (default spearman)")
    g.add_argument("--rdm", choices=RDMS, default="correlation",
                   help="rsa: dissimilarity of two samples, 1 - Pearson correlation or Euclidean "
                        "distance (default correlation)")
    g = p.add_argument_group("uncertainty and size")
    g.add_argument("--permutations", type=int, default=0, metavar="P",
                   help="a permutation null per value from P shuffles of the columns' samples: "
                        "its mean and the p-value (default 0: none)")
    g.add_argument("--bootstrap", type=int, default=0, metavar="B",
                   help="an interval per value from B resamples of the samples (percentile; "
                        "bias-corrected for cka, cka-rbf, procrustes and svcca, see docs/cka.md) "
                        "(default 0: none)")
    g.add_argument("--ci", type=float, default=0.95, help="the interval's coverage (default 0.95)")
    g.add_argument("--minus-null", action="store_true",
                   help="heatmaps show each value minus its null mean (needs --permutations)")
    g.add_argument("--subsample", type=int, metavar="N",
                   help="use N samples drawn at random (seeded; recorded in the JSON)")
    g.add_argument("--max-samples", type=int, default=MAX_SAMPLES, metavar="N",
                   help="measures of n x n matrices refuse more samples than this without "
                        f"--subsample (default {MAX_SAMPLES}: 0.5 GiB per matrix)")
    g = p.add_argument_group("output")
    g.add_argument("--across", choices=ACROSS, help=ACROSS_HELP)
    g.add_argument("--line-blocks", nargs="+", metavar="BLOCK",
                   help="blocks of the measure-against-t plot (default: up to 8 of them)")
    g.add_argument("--line-ref", metavar="REF",
                   help="what each (t, block) is compared with in the line plot: tT (same block "
                        "at T; default the smallest t), same (same key in B), tT/BLOCK, or logsnr "
                        "(B's key of nearest log-SNR; the default with --across logsnr)")
    g.add_argument("--out", metavar="FILE.png",
                   help="heatmap path; the CSV, JSON, line plot and stats CSV go next to it "
                        "(default METRIC.png)")
    add_run_flags(p, seed_what="the permutations, the bootstrap and --subsample",
                  device_default="cpu",
                  overwrite="the outputs (heatmap, CSV, JSON, line plot, stats CSV)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..measures import similarity

    if args.minus_null and not args.permutations:
        raise ProbeError("--minus-null draws each value minus its permutation null: add "
                         "--permutations P (e.g. 1000)")
    args.out = args.out or f"{args.metric}.png"

    def compute(rows, cols):
        return similarity(args.a, args.b, rows=rows, cols=cols, metric=args.metric,
                          across=args.across, k=args.k, sigma=args.sigma,
                          rsa_corr=args.rsa_corr, rdm=args.rdm,
                          permutations=args.permutations, bootstrap=args.bootstrap, ci=args.ci,
                          seed=args.seed, subsample=args.subsample,
                          max_samples=args.max_samples, run=run_options(args))

    return run_measure(args, compute, summary, minus_null=args.minus_null)


def summary(result: Any) -> list[str]:
    """What the command prints after the measure: its value range, then the null, the
    intervals and the memory, those that apply."""
    e, m, u = result.estimator, result.matrix, result.uncertainty
    what = {"mutual-knn": f" (k={e.get('k')})", "cknna": f" (k={e.get('k')})",
            "rsa": f" ({e.get('rsa_corr')} of {e.get('rdm')} RDMs)"}.get(result.metric, "")
    sub = e.get("subsample")
    of = f" (a random subset of {sub['of']}, seed {sub['seed']})" if sub else ""
    i, j = divmod(int(m.argmax()), m.shape[1])  # the pair the platonic-rep code reports
    lines = [f"{result.metric}{what} over {result.num_samples} samples{of}: {m.shape[0]} x "
             f"{m.shape[1]} keys, min {m.min():.3f}, max {m.max():.3f} "
             f"({result.row_labels[i]} vs {result.col_labels[j]})"]
    if result.distance:
        lines.append(f"{result.metric} is a distance: 0 is the same up to rotation, shift and "
                     "scale, 2 the farthest")
    if result.p_value is not None:
        low = int((result.p_value <= 0.05).sum())
        lines.append(f"permutation null: {u['permutations']} shuffles of the columns' samples; "
                     f"p <= 0.05 for {low} of {m.size} pairs (smallest possible p "
                     f"{1 / (1 + u['permutations']):.2g})")
    if result.ci_low is not None:
        lines.append(f"bootstrap: {100 * u['ci']:g}% {u['interval'].split(',')[0]} intervals from "
                     f"{u['bootstrap']} resamples of the samples")
        outside = int(((m < result.ci_low) | (m > result.ci_high)).sum())
        if outside:
            lines.append(f"probe: note: {outside} of {m.size} intervals leave out their value: "
                         f"{result.metric} changes with the number of distinct samples, which a "
                         "resample lowers (docs/cka.md, 'Bootstrap')")
    if "memory" in e:
        lines.append(f"memory: {e['memory']}")
    return lines
