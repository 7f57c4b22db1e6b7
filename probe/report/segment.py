"""Figures of segmentation results: a few images with their true and predicted masks."""
from __future__ import annotations

import os

import numpy as np

from ..files import atomic_path


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
    from matplotlib.figure import Figure

    n = len(examples["ids"])
    if not n:
        return None
    k, ignore = len(summary["class_names"]), summary["ignore_index"]
    images = _images(summary, examples)
    cols = 3 if images is not None else 2
    fig = Figure(figsize=(2.0 * cols, 2.0 * n + 0.6))
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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return os.fspath(path)
