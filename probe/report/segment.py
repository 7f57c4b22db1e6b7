"""Figures of segmentation results: a few images with their true and predicted masks."""
from __future__ import annotations

import os

import numpy as np

from .figures import new_figure, save_figure, t_axis


def _images(summary: dict, examples: dict) -> list | None:
    """The evaluated images, read again from the dataset the file was made from (at the
    masks' side); None where it cannot be read here."""
    from ..store import open_features

    try:
        from ..data import load_dataset

        with open_features(examples["file"]) as f:
            spec, split = f.attrs.get("data"), f.attrs.get("split")
        ds = load_dataset(spec, split, summary["mask_size"], None)
        where = {i: n for n, i in enumerate(ds.ids)}
        return [ds[where[i]][0] for i in examples["ids"]]
    except Exception:  # a figure must not fail the fit: draw the masks alone
        return None


def colours(k: int) -> np.ndarray:
    """(K + 1, 3) distinct colours; the last is for ignored pixels (black)."""
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return np.concatenate([np.array([cmap(i % 20)[:3] for i in range(k)]), [[0, 0, 0]]])


def paint(mask: np.ndarray, k: int, ignore: int) -> np.ndarray:
    table = colours(k)
    idx = np.where(mask == ignore, k, np.minimum(mask, k))
    return table[idx]


def draw_examples(summary: dict, examples: dict, path: str | os.PathLike) -> str | None:
    """Rows of image, true mask and predicted mask for each example; None if none."""
    n = len(examples["ids"])
    if not n:
        return None
    k, ignore = len(summary["class_names"]), summary["ignore_index"]
    images = _images(summary, examples)
    cols = 3 if images is not None else 2
    fig = new_figure(2.0 * cols, 2.0 * n + 0.6)
    axes = fig.subplots(n, cols, squeeze=False)
    titles = (["image"] if images is not None else []) + ["true", "predicted"]
    for r in range(n):
        panels = []
        if images is not None:
            im = np.asarray(images[r]).transpose(1, 2, 0)
            panels.append(im[..., 0] if im.shape[-1] == 1 else im)
        panels += [paint(examples["true"][r], k, ignore), paint(examples["pred"][r], k, ignore)]
        for c, (ax, p) in enumerate(zip(axes[r], panels)):
            ax.imshow(p, cmap="gray" if p.ndim == 2 else None, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
        axes[r][0].set_ylabel(examples["ids"][r], fontsize=7)
    on = summary["keys"][0] if len(summary["keys"]) == 1 else f"{len(summary['keys'])} keys"
    fig.suptitle(f"{summary['head']} on {on}: mIoU {summary['miou']:.3f}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    return os.fspath(path)


def plot_miou_vs_t(rows: list[dict], path: str | os.PathLike) -> str:
    """mIoU (with its interval) against t, one line per (block, head); single-key rows
    only (a file without timesteps: one point per block, against the block)."""
    single = [r for r in rows if r["block"] is not None]
    fig = new_figure(5.5, 3.6)
    ax = fig.subplots()
    timed = any(r["t"] is not None for r in single)
    lines: dict = {}
    for r in single:
        lines.setdefault((r["block"], r["head"]), []).append(r)
    for (block, head), pts in lines.items():
        pts.sort(key=lambda r: r["t"] or 0)
        x = [r["t"] if timed else block for r in pts]
        y = [100 * r["miou"] for r in pts]
        line = ax.plot(x, y, marker="o", label=f"{block} ({head})")[0]
        if all(r["miou_lo"] is not None for r in pts):
            ax.fill_between(x, [100 * r["miou_lo"] for r in pts],
                            [100 * r["miou_hi"] for r in pts], alpha=0.15,
                            color=line.get_color())
    if timed:
        t_axis(ax, sorted({r["t"] for r in single if r["t"] is not None}))
    ax.set_ylabel("mIoU (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)
