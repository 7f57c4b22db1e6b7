"""The result of a segmentation fit: its JSON summary, per-image histograms and head."""
from __future__ import annotations

import os

import numpy as np

from ...files import atomic_json
from ...selection import key_label


class SegResult:
    """``summary``: the JSON-ready result (also ``result["miou"]``); ``stats``: (N, 3, K)
    per-image intersection / predicted / labelled pixel counts per class (sum them for
    the split's totals); ``model``: the trained head; ``examples``: the first evaluated
    images' ids, true and predicted masks (for the figure)."""

    def __init__(self, summary: dict, stats: np.ndarray, model, examples: dict):
        self.summary, self.stats, self.model, self.examples = summary, stats, model, examples

    def __getitem__(self, k):
        return self.summary[k]

    def __repr__(self):
        s = self.summary
        on = (key_label((s["t"], s["block"])) if s["block"] is not None
              else f"{len(s['keys'])} keys")
        return f"SegResult({s['head']} on {on}: mIoU {s['miou']:.4f}, {s['params']} params)"

    def save(self, path: str | os.PathLike) -> str:
        """Write the JSON to ``path`` and the figure of a few images next to it
        (:func:`masks_plot_path`)."""
        from ...report.segment import draw_examples

        draw_examples(self.summary, self.examples, masks_plot_path(path))
        return atomic_json(self.summary, path)


def masks_plot_path(json_path: str | os.PathLike) -> str:
    """RESULT.json -> RESULT_masks.png."""
    root, ext = os.path.splitext(os.fspath(json_path))
    return (root if ext.lower() == ".json" else os.fspath(json_path)) + "_masks.png"
