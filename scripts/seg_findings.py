"""Segmentation findings: mIoU of a seg-linear head on every shipped model's block maps,
at its best (t, block), next to the supervised reference, the raw pixels and each model at
random init.

    nice python scripts/seg_findings.py --out runs/seg-findings [--data demo-seg]

For each model: extract the train and test splits with --pool none at t = 10 and 100 (the
random-init baselines at t = 10) and up to five blocks spread over the network, train seg-linear on every key (the best key is
chosen by validation mIoU, on 10 % of train), and report test mIoU with its bootstrap
interval over images.  Results are cached per key (OUT/results/*.json): the script can be
stopped and re-run.  Writes OUT/findings.md (the README table) and OUT/grid.csv.
"""
import argparse
import csv
import json
import os

import numpy as np

MODELS = ["ldae-fmnist", "dae-pixel-fmnist", "dit-fmnist", "adm-fmnist"]
REFERENCE = "sup-fmnist"
# two timesteps (the classification study's best, t = 10, and the next, t = 100), to fit
# the 2 shared cores; the random-init baselines at t = 10 only
TIMESTEPS = [10, 100]
RANDOM_INIT_T = [10]
# the 28 px U-Net costs ~30 ViTs a pass and its maps are 28x28: its features are extracted
# at both timesteps, but heads are fitted at t = 10 only (the classification study's best
# t for every model), and it has no random-init baseline here
FIT_T = {"adm-fmnist": [10]}
NO_RANDOM_INIT = {"adm-fmnist"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/seg-findings")
    p.add_argument("--data", default="demo-seg", help="demo-seg (default) or fashion-mnist-seg")
    p.add_argument("--models", default=",".join(MODELS + [REFERENCE]))
    p.add_argument("--limit", type=int, help="first N images per split (a quick check)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--no-random-init", action="store_true")
    p.add_argument("--random-init-only", action="store_true",
                   help="only the random-init baselines (to run beside a process doing the "
                        "trained models; a last run without it assembles the table)")
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def spread(items, k=5):
    if len(items) <= k:
        return list(items)
    step = (len(items) - 1) / (k - 1)
    return list(dict.fromkeys(items[round(i * step)] for i in range(k)))


def features(args, label, name, random_init):
    """(train, test) feature files of one model (extracted once)."""
    from probe import extract, load_model

    paths = [os.path.join(args.out, "features", f"{label}-{s}.h5") for s in ("train", "test")]
    if all(os.path.exists(p) for p in paths):
        return paths
    model = load_model(name, random_init=random_init, device=args.device)
    ts = (RANDOM_INIT_T if random_init else TIMESTEPS) if model.has_timesteps else None
    blocks = spread(model.block_names)
    for split, path in zip(("train", "test"), paths):
        extract(model, args.data, split=split, t=ts, blocks=blocks, pool="none",
                dtype="float16", out=path, limit=args.limit, batch_size=64, progress=False,
                device=args.device, log=lambda *_: None)
    return paths


def pixel_features(args):
    """The raw image as a (1, 28, 28) map, with the dataset's masks."""
    from probe.data import load_dataset
    from probe.store import write_features

    paths = [os.path.join(args.out, "features", f"pixels-{s}.h5") for s in ("train", "test")]
    for split, path in zip(("train", "test"), paths):
        if os.path.exists(path):
            continue
        ds = load_dataset(args.data, split, 28, 1)
        n = len(ds) if args.limit is None else min(args.limit, len(ds))
        rows = list(range(n))
        images = np.stack([x.numpy() for x in ds.load_batch(rows)])
        write_features(path, {"pixels": images}, labels=ds.labels[:n], ids=ds.ids[:n],
                       class_names=ds.class_names, masks=ds.load_masks(rows),
                       mask_class_names=ds.mask_class_names, ignore_index=ds.ignore_index,
                       attrs={"data": ds.spec, "split": split, "pool": "none",
                              "model": "pixels"})
    return paths


def grid(args, label, paths):
    """seg-linear on every key of the train file, scored on the test file."""
    import probe
    from probe.selection import key_label
    from probe.store import open_features

    fit_t = FIT_T.get(label, TIMESTEPS)
    with open_features(paths[0]) as f:
        keys = [k for k in f.keys if k[0] is None or k[0] in fit_t]
    rows = []
    for key in keys:
        cache = os.path.join(args.out, "results", f"{label}-{key_label(key).replace('/', '_')}.json")
        if not os.path.exists(cache):
            r = probe.fit(paths[0], keys=key_label(key), test=paths[1], head="seg-linear",
                          epochs=args.epochs, device=args.device, progress=False, out=cache)
            print(f"{label} {key_label(key)}: mIoU {r['miou']:.3f} (val {r['val_miou']:.3f})",
                  flush=True)
        with open(cache) as fh:
            s = json.load(fh)
        rows.append(dict(model=label, t=s["t"], block=s["block"], miou=s["miou"],
                         ci=s["miou_ci"], val_miou=s["val_miou"], acc=s["pixel_accuracy"],
                         iou_background=s["per_class_iou"].get("background"),
                         n_train=s["num_train"], n_eval=s["num_eval"]))
    return rows


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(os.path.join(args.out, "results"), exist_ok=True)
    names = args.models.split(",")
    entries = [] if args.random_init_only else [(m, m, False) for m in names]
    if not args.no_random_init:
        entries += [(f"{m}-random-init", m, True) for m in names
                    if m != REFERENCE and m not in NO_RANDOM_INIT]
    rows = grid(args, "pixels", pixel_features(args))
    for label, name, random_init in entries:
        rows += grid(args, label, features(args, label, name, random_init))
    with open(os.path.join(args.out, "grid.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    if args.random_init_only:
        return
    lines = table(rows, [e[0] for e in entries])
    with open(os.path.join(args.out, "findings.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def _best(rows, label):
    mine = [r for r in rows if r["model"] == label]
    return max(mine, key=lambda r: r["val_miou"]) if mine else None


def _key(r):
    return r["block"] if r["t"] is None else f"t{r['t']}/{r['block']}"


def _fmt(r):
    key = (f"t={r['t']}, {r['block']}" if r["t"] is not None else r["block"])
    lo, hi = r["ci"]
    return (f"{key} | {100 * r['miou']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] | "
            f"{100 * r['acc']:.1f} | {100 * (r['iou_background'] or 0):.1f}")


def table(rows, labels):
    out = ["| features | best (t, block) by validation mIoU | test mIoU [95 % CI] | "
           "pixel accuracy | background IoU |", "|---|---|---|---|---|"]
    for label in ["pixels"] + labels:
        b = _best(rows, label)
        if b is not None:
            out.append(f"| `{label}` | {_fmt(b)} |")
    out += ["", "mIoU per key (test, %):", ""]
    for label in ["pixels"] + labels:
        mine = [r for r in rows if r["model"] == label]
        out.append(f"- `{label}`: " + ", ".join(
            f"{_key(r)} {100 * r['miou']:.1f}" for r in mine))
    return out


if __name__ == "__main__":
    main()
