"""`probe demo`: the study on the bundled data and the shipped models, as a report."""


def register(sub):
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
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(args):
    from ..demo import run_demo

    models = [m.strip() for m in args.models.split(",")] if args.models else None
    run_demo(args.out, models=models, data=args.data, limit=args.limit, epochs=args.epochs,
             baselines=args.baselines, progress=not args.quiet)
