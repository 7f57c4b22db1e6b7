"""One correspondence run: pairs -> maps -> matches -> PCK -> files."""
from __future__ import annotations

import csv
import os
import time
from collections import OrderedDict
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ProbeError

from .match import match_pair
from .pairs import PairSet
from .pck import score_pairs, summarise

OUTPUTS = ("pck.json", "pck_categories.csv")


def run_correspond(model: Any, data: str, t: Any, blocks: Any, keys: Any,
                   out: str | os.PathLike | None, *, features: Sequence[Any] | None,
                   options: Any, split: str, cache: Any, device: Any, batch_size: int,
                   overwrite: bool, progress: bool, log: Callable[[str], Any],
                   command: str | None, preset: str | None,
                   model_kwargs: dict[str, Any]) -> dict[str, Any]:
    from ..device import resolve_device
    from ..store import open_features
    from . import _variants, load_pairs
    from .features import MapReader, extract_maps

    out = os.fspath(out) if out is not None else None
    if out is not None:
        from ..cli.common import refuse_existing

        refuse_existing([os.path.join(out, n) for n in OUTPUTS], overwrite)
    pairs = load_pairs(data, split, options.warp, options.limit)
    dev = resolve_device(device)
    paths = [os.fspath(p) for p in features] if features else None
    extraction = None
    if paths is None:
        from ..extractors.registry import load_model

        net = load_model(model, device=dev, **model_kwargs) if isinstance(model, str) else model
        net = net.to(dev).eval()
        if keys is not None:  # extract what the keys name
            t, blocks = keys_to_grid(keys)
        cache_dir = os.fspath(cache) if cache else os.path.join(out or ".", "features")
        label = "true" if "{class}" in str(getattr(net, "prompt", "")) else None
        paths = [extract_maps(net, pairs, t, blocks if blocks is not None else "all", cache_dir,
                              image_size=options.image_size, ensemble=options.ensemble,
                              seed=options.seed, class_label=label, batch_size=batch_size,
                              precision=options.precision,
                              device=dev, progress=progress, log=log, command=command)]
        extraction = {"model": net.name, "prompt": getattr(net, "prompt", None),
                      "class_label": label}
        t_sel, b_sel, k_sel = (None, None, keys) if keys is not None else (t, blocks, None)
    else:
        t_sel, b_sel, k_sel = t, blocks, keys
    files = [open_features(p) for p in paths]
    try:
        variants = _variants(files, t_sel, b_sel, k_sel, options.concat)
        kind = options.threshold or pairs.threshold
        ids = pairs.image_ids()
        results, preds_by_variant = [], {}
        for name, vfiles, vkeys in variants:
            t0 = time.time()
            preds = match_all(MapReader(vfiles, vkeys, ids), pairs, options.match, dev)
            s = summarise(score_pairs(preds, pairs.pairs, pairs.sizes, options.alphas, kind))
            s.update(variant=name, files=[f.path for f in vfiles],
                     keys=[[_key_json(k) for k in ks] for ks in vkeys],
                     seconds=round(time.time() - t0, 3))
            results.append(s)
            preds_by_variant[name] = preds
            a = str(options.alphas[0])
            log(f"{name}: PCK@{a} per point {_pct(s['per_point'][a])}, per image "
                f"{_pct(s['per_image'][a])} ({s['points']} points, {s['pairs']} pairs, "
                f"{s['invisible_points']} invisible)")
        attrs = files[0].attrs
    finally:
        for f in files:
            f.close()
    report = {
        "data": pairs.spec, "split": pairs.split, "threshold": kind,
        "alphas": list(options.alphas), "matching": options.match.describe(),
        "concat": options.concat, "preset": preset, "features": paths,
        "extraction": extraction, "image_size": attrs.get("image_size"),
        "feature_settings": {k: attrs.get(k) for k in ("model", "timesteps", "blocks", "ensemble",
                                                       "noise_seed", "transform", "class_label")},
        "command": command or "probe.correspond() from Python",
        "variants": results,
    }
    if out is not None:
        write_outputs(out, report, pairs, preds_by_variant, options)
    return report


def keys_to_grid(keys: Any) -> tuple[list[int] | None, list[str]]:
    """(timesteps, blocks) to extract for explicit keys tT/BLOCK (or BLOCK alone for a
    network without timesteps); the keys then select from that grid."""
    from ..selection import _words, parse_key

    parsed = [parse_key(k) for k in (_words(keys) or [])]
    if not parsed:
        raise ProbeError("--keys all: name the keys, or use --t and --blocks")
    ts = sorted({k[0] for k in parsed if k[0] is not None})
    return (ts or None), list(dict.fromkeys(k[1] for k in parsed))


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}%"


def _key_json(k: tuple) -> list:
    return [None if k[0] is None else int(k[0]), k[1]]


def match_all(reader: Any, pairs: PairSet, match: Any, device: Any,
              keep: int = 32) -> list[np.ndarray]:
    """Predictions of every pair; maps are read once per image while in a small cache."""
    import torch

    cache: OrderedDict = OrderedDict()

    def maps(i: str) -> list:
        if i in cache:
            cache.move_to_end(i)
            return cache[i]
        m = [torch.from_numpy(a).to(device) for a in reader.maps(i)]
        cache[i] = m
        if len(cache) > keep:
            cache.popitem(last=False)
        return m

    return [match_pair(maps(p.src), maps(p.trg), p.src_kps, pairs.sizes[p.src],
                       pairs.sizes[p.trg], match) for p in pairs.pairs]


def write_outputs(out: str, report: dict, pairs: PairSet, preds: dict, options: Any) -> None:
    """The per-category CSV and figures first, pck.json last: a folder with pck.json is
    complete."""
    from ..files import atomic_json, atomic_write
    from ..report.correspond import draw_pairs, draw_pck_vs_t

    os.makedirs(out, exist_ok=True)
    with atomic_write(os.path.join(out, "pck_categories.csv"), newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["variant", "category", "alpha", "pck_per_point", "pck_per_image", "pairs",
                    "points", "invisible"])
        for v in report["variants"]:
            for a in v["alphas"]:
                for c, row in v["categories"].items():
                    w.writerow([v["variant"], c, a, row["per_point"][str(a)],
                                row["per_image"][str(a)], row["pairs"], row["points"],
                                row["invisible"]])
                w.writerow([v["variant"], "(all, per category mean)", a,
                            v["per_point"][str(a)], v["per_category"][str(a)], v["pairs"],
                            v["points"], v["invisible_points"]])
    figures = []
    if options.figure_pairs > 0 and report["variants"]:
        best = max(report["variants"], key=lambda v: v["per_point"][str(v["alphas"][0])] or -1)
        path = os.path.join(out, "pairs.png")
        draw_pairs(path, pairs, preds[best["variant"]], options.figure_pairs,
                   report["alphas"][0], report["threshold"], title=best["variant"])
        figures.append(path)
    if len(report["variants"]) > 1 and not report["concat"]:
        path = os.path.join(out, "pck_vs_t.png")
        if draw_pck_vs_t(path, report["variants"], str(report["alphas"][0])):
            figures.append(path)
    report["figures"] = figures
    atomic_json(report, os.path.join(out, "pck.json"))

