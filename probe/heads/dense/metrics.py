"""Segmentation scores: mIoU, per-class IoU and pixel accuracy from one confusion matrix
accumulated over the whole split, with a bootstrap interval over images.

The arithmetic is mmsegmentation's (``mmseg/evaluation/metrics/iou_metric.py``:
``intersect_and_union`` per image, summed over the split, then ``total_area_to_metrics``):
pixels whose label is the ignore value are dropped; per class, IoU = intersection /
(predicted area + label area - intersection); a class absent from both the predictions
and the labels has 0/0 = NaN and is left out of the mean (``np.nanmean``); a class
predicted but absent from the labels has IoU 0 and counts.  Pixel accuracy (mmseg's
``aAcc``) = correct pixels / labelled pixels.

Per image only three class histograms are kept (intersection, predicted, labelled:
3 x K integers), which is all these scores need, so the bootstrap resamples images
without keeping any K x K matrix per image.
"""
from __future__ import annotations

import numpy as np
import torch


def image_stats(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                ignore_index: int) -> torch.Tensor:
    """(B, 3, K) int64 per image: intersection, predicted area and label area per class,
    over the pixels whose label is not ``ignore_index``.  ``pred``, ``target``: (B, H, W)."""
    b, k = pred.shape[0], num_classes
    valid = target != ignore_index
    # labels outside 0..K-1 other than the ignore value would land in another image's bins
    tgt = torch.where(valid, target.long(), 0).clamp_(0, k - 1)
    base = (torch.arange(b, device=pred.device) * k).view(b, 1, 1)
    p, t = pred.long() + base, tgt + base
    inter = torch.bincount(t[valid & (pred.long() == tgt)], minlength=b * k)
    area_p = torch.bincount(p[valid], minlength=b * k)
    area_t = torch.bincount(t[valid], minlength=b * k)
    return torch.stack([inter, area_p, area_t]).view(3, b, k).transpose(0, 1)


def scores_from_totals(totals: np.ndarray) -> dict:
    """mIoU, per-class IoU (NaN where a class is absent from predictions and labels) and
    pixel accuracy from summed (3, K) histograms."""
    inter, area_p, area_t = (np.asarray(a, dtype=np.float64) for a in totals)
    union = area_p + area_t - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    present = ~np.isnan(iou)
    return {"miou": float(np.mean(iou[present])) if present.any() else float("nan"),
            "iou": iou, "pixel_accuracy": float(inter.sum() / max(area_t.sum(), 1))}


def bootstrap_miou(stats: np.ndarray, resamples: int = 1000, ci: float = 0.95,
                   seed: int = 0) -> dict:
    """Percentile interval of mIoU and pixel accuracy over ``resamples`` draws of the
    images with replacement; ``stats``: (N, 3, K) per-image histograms."""
    n = len(stats)
    if n < 2 or resamples < 1:
        return {"miou_ci": None, "pixel_accuracy_ci": None, "bootstrap": 0}
    rng = np.random.default_rng(seed)
    mious, accs = np.empty(resamples), np.empty(resamples)
    flat = stats.reshape(n, -1).astype(np.float64)
    for r in range(resamples):
        # per-image counts of a resample: the totals are counts @ stats
        counts = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        s = scores_from_totals((counts @ flat).reshape(stats.shape[1:]))
        mious[r], accs[r] = s["miou"], s["pixel_accuracy"]
    lo, hi = (1 - ci) / 2 * 100, (1 + ci) / 2 * 100
    return {"miou_ci": [float(np.nanpercentile(mious, lo)), float(np.nanpercentile(mious, hi))],
            "pixel_accuracy_ci": [float(np.percentile(accs, lo)), float(np.percentile(accs, hi))],
            "bootstrap": int(resamples), "ci": ci}


def segmentation_metrics(stats: np.ndarray, class_names: list[str], *, resamples: int = 1000,
                         ci: float = 0.95, seed: int = 0) -> dict:
    """The JSON-ready scores of per-image histograms ``stats`` (N, 3, K)."""
    totals = stats.sum(0)
    s = scores_from_totals(totals)
    out = {
        "miou": s["miou"], "pixel_accuracy": s["pixel_accuracy"],
        "per_class_iou": {name: (None if np.isnan(v) else float(v))
                          for name, v in zip(class_names, s["iou"])},
        "classes_in_mean": int((~np.isnan(s["iou"])).sum()),
        "pixels": {"labelled": int(totals[2].sum()),
                   "per_class": {n: int(v) for n, v in zip(class_names, totals[2])}},
    }
    out.update(bootstrap_miou(stats, resamples, ci, seed))
    return out
