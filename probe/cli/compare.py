"""`probe compare`: a grid of heads over (t, block) keys -> CSV, markdown table, plots."""
import argparse
import os

from .common import add_overwrite, add_selection, refuse_existing, selection
from .fit import add_head_args, add_train_args, options
from .segment import add_seg_args, is_segmentation, run_segmentation

def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="compare heads over timesteps and blocks",
                       description="Train every head on every selected (t, block) of TRAIN.h5 "
                                   "(each head in one pass over the data), evaluate on TEST.h5, "
                                   "and write results.csv, results.md, results.json, "
                                   "accuracy_vs_t.png and heads.png.")
    p.add_argument("train", metavar="TRAIN.h5")
    p.add_argument("test", metavar="TEST.h5", nargs="?",
                   help="test features (omit to evaluate on a validation split of train)")
    p.add_argument("--heads", default="linear,mlp,cnn,attention",
                   help="comma list of linear, mlp, cnn, attention, logreg, knn, and fusion "
                        "(one head on all the selected keys; --fusion-head) "
                        "(default linear,mlp,cnn,attention)")
    add_selection(p)
    p.add_argument("--out", default="compare", metavar="DIR",
                   help="output folder (default ./compare)")
    add_overwrite(p, "the results in --out")
    add_head_args(p)
    add_train_args(p)
    add_seg_args(p)
    p.add_argument("--fused", action="store_true",
                   help="segmentation: also each head on all the selected keys concatenated")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if is_segmentation(args) or "seg-" in args.heads:
        return run_segmentation(args)
    from ..heads.compare import COLUMNS, compare_heads, parse_heads
    from ..report.heads import FUSION_PLOT, OUTPUTS, write_compare

    outputs = OUTPUTS + ((FUSION_PLOT,) if "fusion" in parse_heads(args.heads) else ())
    refuse_existing([os.path.join(args.out, f) for f in outputs], args.overwrite)
    t, blocks, keys = selection(args)
    found = compare_heads(args.train, args.test, heads=args.heads, t=t, blocks=blocks, keys=keys,
                          comparable_size=args.comparable_size, progress=not args.quiet,
                          **options(args))
    write_compare(args.out, found.rows, COLUMNS, found.summaries, found.context)
    with open(os.path.join(args.out, "results.md")) as f:
        print(f.read(), end="")
    print(f"{len(found.rows)} results in {args.out}/: {', '.join(outputs)}")
    return 0
