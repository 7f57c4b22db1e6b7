"""PCK@alpha: the fraction of keypoints predicted within alpha x threshold of the truth.

Everything is in the target's ORIGINAL pixel coordinates.  A point counts as correct when
``distance <= alpha * threshold`` (DIFT's ``<=``).  Thresholds, per pair:

- ``bbox``: the longer side of the target's bounding box (SPair-71k; warp pairs);
- ``img``: the longer side of the target image (PF-PASCAL);
- ``kps``: the longer side of the bounding box of the target's visible keypoints (PF-WILLOW).

Averages: ``per_point`` pools every visible point; ``per_image`` averages each pair's
fraction (pairs without a visible point are left out and counted); ``per_category`` is
the mean over categories of each category's per-image PCK (SPair's table), with every
category's per-point and per-image values and counts in ``categories``.  Invisible and
padded points never enter a denominator; their number is reported.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import ProbeError
from .pairs import THRESHOLDS, Pair


def check_alphas(alphas: Sequence[float]) -> tuple[float, ...]:
    out = tuple(float(a) for a in alphas)
    if not out:
        raise ProbeError("give at least one alpha for PCK, e.g. --alpha 0.1")
    bad = [a for a in out if not a > 0]
    if bad:
        raise ProbeError(f"PCK alpha must be > 0, not {bad[0]:g}: e.g. --alpha 0.05,0.1")
    return out


def threshold(pair: Pair, kind: str, trg_size: tuple[int, int]) -> float:
    """The pair's PCK threshold in original target pixels."""
    if kind == "bbox":
        if pair.trg_bbox is None:
            raise ProbeError(f"pair {pair.name or pair.src}: no target bounding box for the bbox "
                             "threshold: use --threshold img or kps")
        x0, y0, x1, y1 = pair.trg_bbox
        return float(max(x1 - x0, y1 - y0))
    if kind == "img":
        return float(max(trg_size))
    if kind == "kps":
        k = pair.trg_kps[pair.visible]
        return float((k.max(axis=0) - k.min(axis=0)).max()) if len(k) else float("nan")
    raise ProbeError(f"unknown PCK threshold {kind!r}: use one of {', '.join(THRESHOLDS)}")


@dataclass
class PairScores:
    """Per pair: visible points, invisible points, correct points per alpha, category."""
    alphas: tuple[float, ...]
    visible: np.ndarray    # (P,)
    invisible: np.ndarray  # (P,)
    correct: np.ndarray    # (P, A)
    categories: list[str]


def score_pairs(preds: Sequence[np.ndarray], pairs: Sequence[Pair],
                sizes: dict[str, tuple[int, int]], alphas: Sequence[float],
                kind: str) -> PairScores:
    """Count correct points of every pair for every alpha."""
    al = np.asarray(check_alphas(alphas))
    vis, inv, cor = [], [], []
    for pred, pair in zip(preds, pairs):
        m = pair.visible
        d = np.linalg.norm(np.asarray(pred)[m] - pair.trg_kps[m], axis=1)
        thr = threshold(pair, kind, sizes[pair.trg])
        ok = np.nan_to_num(d, nan=np.inf)[:, None] <= al[None] * thr  # NaN (rejected): wrong
        vis.append(int(m.sum()))
        inv.append(int((~m).sum()))
        cor.append(ok.sum(axis=0))
    return PairScores(tuple(al.tolist()), np.asarray(vis), np.asarray(inv),
                      np.asarray(cor, dtype=np.int64).reshape(len(vis), len(al)),
                      [p.category for p in pairs])


def _summary(vis: np.ndarray, cor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(per point, per image) PCK in percent, one per alpha; NaN where nothing counts."""
    keep = vis > 0
    n = vis.sum()
    per_point = 100.0 * cor.sum(axis=0) / n if n else np.full(cor.shape[1], np.nan)
    per_image = (100.0 * (cor[keep] / vis[keep, None]).mean(axis=0) if keep.any()
                 else np.full(cor.shape[1], np.nan))
    return per_point, per_image


def summarise(s: PairScores) -> dict[str, Any]:
    """PCK per point, per image and per category (mean over categories), with counts."""
    pp, pi = _summary(s.visible, s.correct)
    cats: dict[str, dict[str, Any]] = {}
    images = []
    for c in sorted(set(s.categories)):
        rows = np.asarray([k == c for k in s.categories])
        cp, ci = _summary(s.visible[rows], s.correct[rows])
        images.append(ci)
        cats[c] = {"per_point": _floats(cp, s.alphas), "per_image": _floats(ci, s.alphas),
                   "pairs": int(rows.sum()), "points": int(s.visible[rows].sum()),
                   "invisible": int(s.invisible[rows].sum())}
    ok = [ci for ci in images if np.isfinite(ci).all()]  # categories with a visible point
    per_cat = np.mean(ok, axis=0) if ok else np.full(len(s.alphas), np.nan)
    return {
        "alphas": list(s.alphas),
        "per_point": _floats(pp, s.alphas),
        "per_image": _floats(pi, s.alphas),
        "per_category": _floats(np.atleast_1d(per_cat), s.alphas),
        "pairs": int(len(s.visible)),
        "pairs_without_visible_points": int((s.visible == 0).sum()),
        "points": int(s.visible.sum()),
        "invisible_points": int(s.invisible.sum()),
        "categories": cats,
    }


def _floats(v: np.ndarray, alphas: Sequence[float]) -> dict[str, float | None]:
    return {str(a): (None if not np.isfinite(x) else round(float(x), 4))
            for a, x in zip(alphas, v)}


def chance_level(pair: Pair, size: tuple[int, int], alpha: float, kind: str) -> float:
    """The PCK of a uniformly random prediction over the target's pixels: the fraction of
    pixels within alpha x threshold of each visible point, averaged over the points."""
    w, h = size
    ys, xs = np.mgrid[0:h, 0:w]
    r = alpha * threshold(pair, kind, size)
    fr = [((xs - x) ** 2 + (ys - y) ** 2 <= r * r).mean() for x, y in pair.trg_kps[pair.visible]]
    return float(np.mean(fr)) if fr else float("nan")
