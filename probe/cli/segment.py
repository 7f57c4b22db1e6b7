"""The segmentation side of `probe fit` (--task segmentation or a seg-* head)."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from ..errors import ProbeError

SEG_FLAGS = ("epochs", "batch_size", "lr", "weight_decay", "patience", "val_fraction", "seed",
             "device", "memory_limit_gb", "stream", "bootstrap", "members")
# flags of the classification heads that mean nothing to a segmentation head
NOT_SEG = ("solver", "l2", "max_iter", "tol", "optimizer", "warmup_epochs", "width",
           "num_heads", "fusion_head", "k", "C")


def add_seg_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("segmentation (--task segmentation, --head seg-linear | seg-mlp "
                             "| seg-ensemble | seg-fusion (--dim))")
    g.add_argument("--task", choices=["classification", "segmentation"],
                   help="segmentation: a dense head on block maps, scored by mIoU against the "
                        "file's masks (default head seg-linear)")
    g.add_argument("--members", type=int,
                   help="seg-ensemble: pixel MLPs voting (default 10)")
    g.add_argument("--bootstrap", type=int, metavar="B",
                   help="segmentation: resamples of the evaluated images for the mIoU "
                        "interval (default 1000; 0: none)")


def is_segmentation(args: argparse.Namespace) -> bool:
    return args.task == "segmentation" or str(getattr(args, "head", "")).startswith("seg-")


def run_segmentation(args: argparse.Namespace) -> int:
    """`probe compare --task segmentation`."""
    import os

    from ..heads.dense.compare import OUTPUTS, compare_segmentation
    from .common import refuse_existing, selection

    refuse_existing([os.path.join(args.out, f) for f in OUTPUTS], args.overwrite)
    heads = args.heads if "seg-" in args.heads else "seg-linear"
    t, blocks, keys = selection(args)
    rows = compare_segmentation(args.features if hasattr(args, "features") else args.train,
                                args.test, heads=heads, t=t, blocks=blocks, keys=keys,
                                fused=args.fused, out=args.out, progress=not args.quiet,
                                **seg_options(args))
    with open(os.path.join(args.out, "results.md")) as fh:
        print(fh.read(), end="")
    print(f"{len(rows)} results in {args.out}/: {', '.join(OUTPUTS)}")
    return 0


def seg_options(args: argparse.Namespace) -> dict:
    given = [f for f in NOT_SEG if getattr(args, f, None) not in (None, False)]
    if given or args.comparable_size:
        flag = "comparable_size" if not given else given[0]
        raise ProbeError(f"--{flag.replace('_', '-')} does not apply to segmentation heads")
    opts = {k: getattr(args, k) for k in SEG_FLAGS if getattr(args, k, None) is not None}
    if args.hidden is not None:
        opts["hidden"] = args.hidden
    if args.dim is not None:
        opts["dim"] = args.dim
    return opts


def default_out(head: str, keys: Sequence[Any]) -> str:
    from .common import safe_name
    from ..selection import key_label

    name = "+".join(safe_name(key_label(k).replace("/", "_")) for k in keys)
    return f"fit-{head}-{name[:150]}.json"


def run(args: argparse.Namespace, t: Any, blocks: Any, keys: Any) -> int:
    from ..heads.dense.fit import DEFAULT_HEAD, fit_segmentation
    from ..heads.dense.result import masks_plot_path
    from ..store import open_features
    from .common import refuse_existing

    head = DEFAULT_HEAD if args.head == "linear" else args.head
    opts = seg_options(args)
    named = any(x is not None for x in (t, blocks, keys))
    with open_features(args.features) as f:
        chosen = f.select(t, blocks, keys) if named else [f.catalog.one()]
    out = args.out or default_out(head, chosen)
    outs = [out, masks_plot_path(out)]
    refuse_existing(outs, args.overwrite)
    from ..selection import key_label

    result = fit_segmentation(args.features, keys=[key_label(k) for k in chosen], head=head,
                              test=args.test, progress=not args.quiet, **opts)
    result.save(out)
    if args.json:
        print(json.dumps(result.summary, indent=1))
    else:
        print_summary(result.summary)
    print(f"saved {' and '.join(outs)}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _pct(x):
    return "n/a" if x is None else f"{100 * x:.1f}"


def print_summary(s: dict) -> None:
    print(f"{s['head']} head on {s['input']}, {s['params']:,} "
          f"parameters, masks {s['mask_size']}x{s['mask_size']}")
    for k, w in (s.get("key_weights") or {}).items():
        print(f"  key weight {k}: {w:.3f}")
    print(f"trained {s['epochs_run']} epochs on {s['num_train']} images (epoch "
          f"{s['selected_epoch']} kept, validation mIoU {_pct(s['val_miou'])}) in "
          f"{s['train_time_s']:.1f} s on {s['settings']['device']}")
    where = s["test_file"] if s["evaluated_on"] == "test" else "the validation split"
    ci = s.get("miou_ci")
    interval = f" [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else ""
    print(f"evaluated on {where} ({s['num_eval']} images): mIoU {_pct(s['miou'])}{interval} "
          f"over {s['classes_in_mean']} classes, pixel accuracy {_pct(s['pixel_accuracy'])}")
    width = max(len(n) for n in s["class_names"])
    print("per-class IoU:")
    for n in s["class_names"]:
        print(f"  {n:<{width}}  {_pct(s['per_class_iou'][n])}")
