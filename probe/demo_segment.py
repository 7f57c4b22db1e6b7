"""`probe demo --segmentation`: a seg-linear head on each model's block maps at every t of
its classification study, scored by mIoU on the test split of the data's masked twin.

The maps are pooled to 4x4 (``--pool avg4``: every shipped model has a map that large) and
the images capped at :data:`SEG_LIMIT` per split, so the section stays a small share of the
demo; ``scripts/seg_findings.py`` is the full-resolution study.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping

SEG_DATA = {"demo": "demo-seg", "fashion-mnist": "fashion-mnist-seg"}
SEG_POOL = "avg4"  # the coarsest shipped map (sup-fmnist, 7 px patches) is 4x4
SEG_BLOCKS = 3   # blocks with a map, spread over the network
SEG_LIMIT = 500  # images per split at most


def seg_data(data: str) -> str | None:
    """The masked twin of the demo's dataset (None: it has none)."""
    return SEG_DATA.get(data)


def segment_section(out: str, section: Mapping[str, Any], plan: Mapping[str, Any],
                    log: Callable[[str], Any] = print) -> dict:
    """Extract the model of ``section`` (a :mod:`probe.demo` section: its t and blocks) on
    the masked data and fit seg-linear per (t, block); cached in ``out/LABEL/segmentation``.
    ``plan``: data, limit, epochs, seed, device, batch_size, overwrite, progress."""
    from . import extract, load_model
    from .selection import spread
    from .files import atomic_json
    from .heads.dense.compare import compare_segmentation
    from .store import open_features

    s = section["settings"]
    label, limit = section["name"], plan["limit"]
    n = SEG_LIMIT if limit is None else min(limit, SEG_LIMIT)
    settings = dict(name=s["name"], weights_sha256=s["weights_sha256"], data=plan["data"],
                    ts=section["ts"], blocks=section["blocks"], limit=n, pool=SEG_POOL,
                    epochs=plan["epochs"], seed=plan["seed"])
    sdir = os.path.join(out, section["dir"], "segmentation")
    cache = os.path.join(sdir, "section.json")
    if os.path.exists(cache) and not plan["overwrite"]:
        with open(cache) as fh:
            cached = json.load(fh)
        if cached.get("settings") == settings:
            log(f"{label} segmentation: reusing {cache}")
            return cached
    with open_features(section["files"]["train"]) as f:  # a classifier's vectors: no map
        mapped = [b for b in section["blocks"] if any(
            k[1] == b and len(f.shape(k)) == 3 for k in f.keys)]
    blocks = spread(mapped, SEG_BLOCKS)
    model = load_model(s["name"], device=plan["device"])
    paths = [extract(model, plan["data"], split=split, t=section["ts"], blocks=blocks,
                     pool=SEG_POOL, out=os.path.join(out, "features", f"{label}-seg-{split}.h5"),
                     limit=n, batch_size=plan["batch_size"], progress=plan["progress"],
                     noise_seed=plan["seed"], device=plan["device"],
                     overwrite=plan["overwrite"], log=log)
             for split in ("train", "test")]
    with open_features(paths[1]) as f:
        n_test = len(f)
    rows = compare_segmentation(paths[0], paths[1], heads=["seg-linear"], out=sdir,
                                progress=plan["progress"], epochs=plan["epochs"],
                                seed=plan["seed"], device=plan["device"])
    result = dict(name=label, settings=settings, ts=section["ts"], dir=section["dir"],
                  n_test=n_test, rows=[{k: r[k] for k in ("t", "block", "miou", "miou_lo",
                                                          "miou_hi", "pixel_accuracy")}
                                       for r in rows])
    atomic_json(result, cache)
    return result
