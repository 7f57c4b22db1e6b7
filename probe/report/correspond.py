"""Correspondence figures: a few matched pairs, and PCK against t per block.

Drawn through the report layer's figure helpers (:mod:`probe.report.figures`).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .figures import new_figure, save_figure, t_axis


def _image(src: Any) -> np.ndarray:
    if isinstance(src, np.ndarray):
        return src
    from PIL import Image

    with Image.open(src) as im:
        return np.asarray(im.convert("RGB"))


def draw_pairs(path: str, pairs: Any, preds: Sequence[np.ndarray], n: int, alpha: float,
               kind: str, title: str = "") -> str:
    """The first ``n`` pairs: source keypoints (left); true targets (circles) and predictions
    (crosses, green within alpha x threshold, red otherwise) on the target (right)."""
    from ..correspondence.pck import threshold

    rows = pairs.pairs[:n]
    fig = new_figure(6, 3 * len(rows))
    for r, (p, pred) in enumerate(zip(rows, preds)):
        a, b = fig.add_subplot(len(rows), 2, 2 * r + 1), fig.add_subplot(len(rows), 2, 2 * r + 2)
        cmap = "gray" if _image(pairs.images[p.src]).ndim == 2 else None
        a.imshow(_image(pairs.images[p.src]), cmap=cmap)
        b.imshow(_image(pairs.images[p.trg]), cmap=cmap)
        thr = alpha * threshold(p, kind, pairs.sizes[p.trg])
        for k in np.flatnonzero(p.visible):
            ok = np.linalg.norm(pred[k] - p.trg_kps[k]) <= thr
            colour = "tab:green" if ok else "tab:red"
            a.plot(*p.src_kps[k], "o", ms=4, mfc="none", mec="yellow")
            b.plot(*p.trg_kps[k], "o", ms=4, mfc="none", mec="yellow")
            if np.all(np.isfinite(pred[k])):
                b.plot(*pred[k], "x", ms=5, color=colour)
                b.plot([p.trg_kps[k][0], pred[k][0]], [p.trg_kps[k][1], pred[k][1]], "-",
                       lw=0.6, color=colour)
        a.set_title(f"source {p.src}"[:40], fontsize=7)
        b.set_title(f"target: o true, x predicted (PCK@{alpha:g})", fontsize=7)
        for ax in (a, b):
            ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=8)
    save_figure(fig, path, bbox_inches="tight")
    return path


def draw_pck_vs_t(path: str, variants: Sequence[dict], alpha: str) -> bool:
    """PCK (per point) against t, one line per block (DIFT's ablation figure); False when
    the variants hold fewer than two timesteps (nothing to draw)."""
    lines: dict[str, list[tuple[int, float]]] = {}
    for v in variants:
        (key,) = v["keys"][0] if len(v["keys"]) == 1 and len(v["keys"][0]) == 1 else (None,)
        if key is None or key[0] is None or v["per_point"][alpha] is None:
            continue
        lines.setdefault(key[1], []).append((key[0], v["per_point"][alpha]))
    if not any(len(pts) > 1 for pts in lines.values()):
        return False
    fig = new_figure(5, 3.2)
    ax = fig.add_subplot(1, 1, 1)
    for block, pts in lines.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, label=block)
    t_axis(ax, sorted({p[0] for pts in lines.values() for p in pts}))
    ax.set_ylabel(f"PCK@{alpha} per point (%)")
    ax.legend(fontsize=7)
    save_figure(fig, path, bbox_inches="tight")
    return True
