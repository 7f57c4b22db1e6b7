"""`probe demo`: the study on the bundled data and the shipped models, as a report."""
import argparse

from .common import add_run_flags, add_selection, selection


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole study on the bundled data, write a report",
                       description="Extract features from each shipped model, compare heads, "
                                   "compute CKA, and write report.md + index.html with figures.")
    p.add_argument("--out", default="probe-demo", help="report folder (default probe-demo)")
    p.add_argument("--models", help="comma-separated model names (default: the shipped models)")
    p.add_argument("--data", default="demo",
                   help="dataset spec (default: demo, the bundled Fashion-MNIST subset; "
                        "fashion-mnist: the full official split)")
    p.add_argument("--limit", type=int, help="only the first N images of each split (quick look)")
    p.add_argument("--baselines", action="store_true",
                   help="also study each model at random init (same architecture, untrained)")
    p.add_argument("--epochs", type=int, help="head training epochs (default: each head's own)")
    p.add_argument("--segmentation", action="store_true",
                   help="also a seg-linear head per (t, block) on the masked twin of the data "
                        "(demo-seg), mIoU against t per block (adds about a minute)")
    add_selection(p, t_default="four spread over the schedule", keys=False,
                  what=" (default: t spread over the schedule, 5 blocks spread over the network)")
    add_run_flags(p, seed_what="the noise and the heads",
                  overwrite="the report and its cached features and results (without it, a "
                            "re-run reuses what matches)", batch_size=64,
                  batch_what="images per extraction batch")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..demo import run_demo

    models = [m.strip() for m in args.models.split(",")] if args.models else None
    t, blocks, _ = selection(args)
    run_demo(args.out, models=models, data=args.data, t=t, blocks=blocks, limit=args.limit,
             epochs=args.epochs, baselines=args.baselines, batch_size=args.batch_size,
             seed=args.seed, device=args.device, overwrite=args.overwrite,
             progress=not args.quiet, segmentation=args.segmentation)
