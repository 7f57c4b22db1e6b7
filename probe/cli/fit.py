"""`probe fit`: train one head on one (t, block) of a feature file and evaluate it."""
import argparse
import hashlib
import json
import sys
from collections.abc import Sequence
from typing import Any

from ..errors import ProbeError
from ..selection import key_label
from .common import (add_batch_size, add_device, add_overwrite, add_quiet, add_seed, add_selection,
                     add_threads, refuse_existing, safe_name, selection)
from .segment import add_seg_args, is_segmentation

HEAD_CHOICES = ("linear | mlp | cnn | attention | logreg | knn, or fusion: one head on several "
                "keys (--keys/--t/--blocks; all keys by default); segmentation: seg-linear | "
                "seg-mlp | seg-ensemble")


def _ints(text):
    try:
        return tuple(int(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        raise ProbeError(f"bad --hidden {text!r}: give layer widths, e.g. --hidden 512,256") \
            from None


def add_head_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("head options (each applies to the heads named)")
    g.add_argument("--hidden", type=_ints, help="mlp: hidden widths, e.g. 512,256 (default 512)")
    g.add_argument("--width", type=int, help="cnn: channels (default 128)")
    g.add_argument("--depth", type=int,
                   help="cnn: conv layers (default 2); attention (and fusion's): transformer "
                        "blocks (default 1)")
    g.add_argument("--dim", type=int, help="attention: token width; fusion: the common width "
                                           "each key is projected to (default 128)")
    g.add_argument("--num-heads", type=int,
                   help="attention (and fusion's): attention heads (default 4)")
    g.add_argument("--pos-embed", action="store_true",
                   help="attention (and fusion's): add a learned positional embedding (off by "
                        "default)")
    g.add_argument("--fusion-head", choices=["linear", "attention"],
                   help="fusion: the head on the mixed keys (default linear: pooled vectors; "
                        "attention: maps, pooled to the smallest grid)")
    g.add_argument("--comparable-size", action="store_true",
                   help="size mlp/cnn/attention to about the linear head's parameter count "
                        "(fusion: a linear head on all its keys side by side)")
    g.add_argument("--k", type=int, help="knn: neighbours (default 20)")
    g.add_argument("--C", type=float, help="logreg: inverse L2 strength (default 1.0)")


def _floats(text):
    try:
        values = tuple(float(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        values = ()
    if not values:
        raise ProbeError(f"bad --l2 {text!r}: give a number or a comma list, e.g. --l2 1e-4 or "
                         "--l2 1e-5,1e-4,1e-3")
    return values[0] if len(values) == 1 else values


def add_train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("linear head")
    g.add_argument("--solver", choices=["lbfgs", "sgd"],
                   help="lbfgs (default): full-batch L-BFGS to convergence, where --epochs, "
                        "--optimizer, --lr, --weight-decay, --warmup-epochs and --patience do "
                        "not apply; sgd: the MAE recipe (SGD, cosine schedule, last epoch)")
    g.add_argument("--l2", type=_floats, metavar="F[,F...]",
                   help="lbfgs: L2 strength, (l2/2)|W|^2 added to the mean cross-entropy, "
                        "= 1/(n C) for scikit-learn's C on n training rows (2/(n C) with two "
                        "classes); several values: the best validation loss among them "
                        "(default: chosen on the validation split among 1e-1 ... 1e-6)")
    g.add_argument("--max-iter", type=int, metavar="N",
                   help="lbfgs: iterations per l2 value (default 1000)")
    g.add_argument("--tol", type=float, metavar="F",
                   help="lbfgs: stop when no gradient entry (scikit-learn's test) nor the "
                        "decrease the next step predicts exceeds this (default 1e-4)")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int,
                   help="at most this many epochs (default 30; linear with --solver sgd: 100, "
                        "and at least 4000 steps on small sets)")
    add_batch_size(g, None, "training batch size (default 256)")
    g.add_argument("--optimizer", choices=["adamw", "sgd"],
                   help="default: sgd (momentum 0.9) for linear, adamw for the others")
    g.add_argument("--lr", type=float,
                   help="peak learning rate (default 0.3 for linear; else 0.1 sgd, 1e-3 adamw)")
    g.add_argument("--weight-decay", type=float, help="default: 0 sgd, 0.05 adamw")
    g.add_argument("--warmup-epochs", type=float,
                   help="linear warmup before the cosine (default 1)")
    g.add_argument("--patience", type=int,
                   help="early stopping: stop after this many epochs without a better "
                        "validation top-1 or loss, keep the best epoch; 0 = off, keep the last "
                        "(default: 0 for linear, a quarter of the epochs (at least 5) for others)")
    g.add_argument("--val-fraction", type=float,
                   help="validation split carved from train for early stopping (default 0.1)")
    add_seed(g, "the validation split, the init and the batch order")
    add_device(g)
    add_threads(g)
    g.add_argument("--memory-limit", type=float, dest="memory_limit_gb", metavar="GB",
                   help="features larger than this are streamed from the file (default 2)")
    m = g.add_mutually_exclusive_group()
    m.add_argument("--stream", dest="stream", action="store_const", const=True,
                   help="always stream features from the file")
    m.add_argument("--in-memory", dest="stream", action="store_const", const=False,
                   help="always load features into memory")
    add_quiet(g)


HEAD_KEYS = ("hidden", "width", "depth", "dim", "num_heads", "pos_embed", "k", "C", "fusion_head")
TRAIN_KEYS = ("epochs", "batch_size", "optimizer", "lr", "weight_decay", "warmup_epochs",
              "patience", "val_fraction", "seed", "device", "memory_limit_gb", "stream",
              "solver", "l2", "max_iter", "tol")


def options(args: argparse.Namespace) -> dict[str, Any]:
    """Flags -> keyword options for probe.fit / compare (unset flags keep the defaults)."""
    opts = {k: getattr(args, k) for k in HEAD_KEYS + TRAIN_KEYS if getattr(args, k) is not None}
    if not args.pos_embed:
        opts.pop("pos_embed", None)
    return opts


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fit", help="train a probe head on cached features and evaluate it",
                       description="Train a head on one (t, block) of a feature file made by "
                                   "`probe extract` (the fusion head: on several), evaluate "
                                   "it on a test file (or on a "
                                   "validation split of train), print and save the metrics "
                                   "as JSON.")
    p.add_argument("features", metavar="FEATURES.h5", help="training features")
    p.add_argument("--head", default="linear", help=HEAD_CHOICES + " (default linear)")
    add_selection(p, what=" (one key: --t and --blocks may be omitted where the file "
                          "leaves one choice)")
    p.add_argument("--test", metavar="TEST.h5",
                   help="test features from the same model and settings")
    p.add_argument("--out", metavar="RESULT.json",
                   help="where to save the JSON (default fit-HEAD-tT-BLOCK.json)")
    add_overwrite(p, "--out")
    p.add_argument("--json", action="store_true", help="print the JSON instead of a summary")
    add_head_args(p)
    add_train_args(p)
    add_seg_args(p)
    p.set_defaults(func=run)


def default_out(head: str, t: float | None, block: str) -> str:
    return f"fit-{head}-{'' if t is None else f't{t}-'}{safe_name(block)}.json"


def default_fusion_out(keys: Sequence[tuple[Any, str]]) -> str:
    """fit-fusion-t10_blocks.1+t100_blocks.2.json; a digest when that would be too long."""
    name = "+".join(safe_name(key_label((t, b)).replace("/", "_")) for t, b in keys)
    if len(name) > 150:
        name = f"{len(keys)}keys-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return f"fit-fusion-{name}.json"


def run(args: argparse.Namespace) -> int:
    from ..heads.fit import fit
    from ..heads.result import weights_plot_path

    from ..store import open_features

    t, blocks, keys = selection(args)
    if is_segmentation(args):
        from . import segment

        return segment.run(args, t, blocks, keys)
    fusion = args.head == "fusion"
    with open_features(args.features) as f:  # the keys, to check the outputs before training
        chosen = f.select(t, blocks, keys) if fusion else [f.catalog.one(t, blocks, keys)]
    out = args.out or (default_fusion_out(chosen) if fusion
                       else default_out(args.head, *chosen[0]))
    outs = [out, weights_plot_path(out)] if fusion else [out]
    refuse_existing(outs, args.overwrite)
    result = fit(args.features, keys=[key_label(k) for k in chosen], head=args.head,
                 test=args.test, comparable_size=args.comparable_size,
                 progress=not args.quiet, **options(args))
    s = result.summary
    result.save(out)
    if args.json:
        print(json.dumps(s, indent=1))
    else:
        print_summary(s)
    print(f"saved {' and '.join(outs)}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _print_weights(s):
    width = max(len(k) for k in s["key_weights"])
    print("learned key weights (softmax, sum 1):")
    for k, w in s["key_weights"].items():
        print(f"  {k:<{width}}  {w:.3f}  {'#' * round(40 * w)}")


def print_summary(s: dict[str, Any]) -> None:
    on = (f"{len(s['keys'])} keys ({s['head_options']['fusion_head']} head)" if s.get("keys")
          else key_label((s["t"], s["block"])))
    print(f"{s['head']} head on {on}: {s['input']}, {s['params']:,} parameters")
    if s.get("key_weights"):
        _print_weights(s)
    if s["epochs_run"] is not None:
        chosen = ("last epoch" if s["selected_epoch"] == s["epochs_run"]
                  else f"epoch {s['selected_epoch']} kept by early stopping")
        print(f"trained {s['epochs_run']} epochs on {s['num_train']} samples ({chosen}, "
              f"validation top-1 {_fmt(s['val_top1'])}) in {s['train_time_s']:.1f} s on "
              f"{s['settings']['device']}{', streamed from the file' if s['streamed'] else ''}")
    else:
        print(f"fit on {s['num_train']} samples in {s['train_time_s']:.1f} s")
    for note in s["notes"]:
        print(f"note: {note}")
    where = s["test_file"] if s["evaluated_on"] == "test" else "the validation split"
    lo, hi = s["top1_interval"]
    print(f"evaluated on {where} ({s['num_eval']} samples): top-1 {_fmt(s['top1'])} "
          f"(95 % interval {_fmt(lo)}-{_fmt(hi)}), top-5 {_fmt(s['top5'])}")
    names = s["class_names"]
    width = max(len(n) for n in names)
    print("per-class accuracy:")
    for n in names:
        print(f"  {n:<{width}}  {_fmt(s['per_class_accuracy'][n])}")
    if len(names) <= 20:
        print("confusion matrix (rows: true, columns: predicted):")
        for n, row in zip(names, s["confusion_matrix"]):
            print(f"  {n:<{width}}  " + " ".join(f"{v:5d}" for v in row))


def _fmt(x):
    return "n/a" if x is None else f"{x:.4f}"
