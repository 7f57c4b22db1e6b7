"""Training and scoring segmentation heads from cached block maps.

The maps stay at the resolution they were cached at: each batch is sliced on the device
(from features held there, or streamed from the file within ``memory_limit_gb``, by the
classification heads' :class:`~probe.heads.data.FeatureSource`), and the head upsamples
it on the fly (the logits for ``seg-linear``, the features for the pixel MLPs).  Masks
(uint8, one byte a pixel) are held on the device whole.  So the largest tensors are one
batch of upsampled features, never the split at full resolution.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..data import MAP, FeatureSource
from ..train import head_seed, warmup_cosine
from .metrics import image_stats, scores_from_totals
from .modules import SegMLP, build_seg_head, predict_labels


# Peak learning rates: a linear head on a few thousand images needs a large step to
# converge in 10 epochs (on demo-seg, ldae-fmnist t10/blocks.1: 26.7 mIoU at 1e-3,
# 38.8 at 1e-2, 40.5 at 5e-2; 41.1-41.5 after 30 epochs), the pixel MLPs train as MLPs do.
LR = {"seg-linear": 5e-2, "seg-mlp": 1e-3, "seg-ensemble": 1e-3, "seg-fusion": 1e-2}


@dataclass(frozen=True)
class SegConfig:
    """How a segmentation head trains (filled in from the fit options)."""
    epochs: int = 10
    batch_size: int = 64
    lr: float | None = None            # AdamW, linear warmup (1 epoch) then cosine to 0;
                                       # None: the head's (LR)
    weight_decay: float = 1e-4
    patience: int = 0                  # 0: the whole schedule, keep the last epoch; N: keep the
                                       # best validation mIoU, stop after N epochs without one
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "cpu"
    memory_limit_gb: float = 2.0
    stream: bool | None = None
    bootstrap: int = 1000              # resamples of the evaluated images for the interval

    def as_dict(self) -> dict:
        return asdict(self)


class _RowsAsLabels:
    """A feature file whose labels are its row numbers: the feature source then says, with
    each batch, which rows it holds, so the batch's masks can be sliced to match."""

    def __init__(self, ff):
        self.ff = ff
        self.labels = np.arange(len(ff), dtype=np.int64)

    def __len__(self):
        return len(self.ff)

    def shape(self, key: Any) -> tuple[int, ...]:
        return self.ff.shape(key)

    def dataset(self, key: Any) -> Any:
        return self.ff.dataset(key)


def source(ff: Any, keys: Sequence[Any], cfg: SegConfig) -> FeatureSource:
    return FeatureSource(_RowsAsLabels(ff), [(k, MAP) for k in keys],
                         cfg.memory_limit_gb * (1 << 30), cfg.stream)


def masks_on(ff: Any, device: Any) -> torch.Tensor:
    return torch.from_numpy(ff.masks[...]).to(device)


def _loss(head, xs, target, ignore_index):
    if isinstance(head, SegMLP) and len(head.members) > 1:  # each member its own loss
        return sum(F.cross_entropy(z, target, ignore_index=ignore_index)
                   for z in head.member_logits(xs))
    return F.cross_entropy(head(xs), target, ignore_index=ignore_index)


@torch.no_grad()
def evaluate(head: torch.nn.Module, src: FeatureSource, masks: torch.Tensor, rows: Any,
             keys: Sequence[Any], num_classes: int, ignore_index: int, batch_size: int,
             device: Any, keep: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(per-image histograms (N, 3, K) in row order, the first ``keep`` predictions)."""
    head.eval()
    views = [(k, MAP) for k in keys]
    stats: list[torch.Tensor] = []
    kept: list[torch.Tensor] = []
    for xs, r in src.eval_batches(rows, batch_size, views, device=device):
        pred = predict_labels(head, [xs[v] for v in views])
        stats.append(image_stats(pred, masks[r].long(), num_classes, ignore_index))
        if sum(len(p) for p in kept) < keep:
            kept.append(pred.to(torch.uint8).cpu())
    out = torch.cat(stats).cpu().numpy() if stats else np.zeros((0, 3, num_classes), np.int64)
    preds = torch.cat(kept)[:keep].numpy() if kept else np.zeros((0,), np.uint8)
    return out, preds


def train_seg_head(name: str, shapes: Any, keys: Sequence[Any], src: FeatureSource,
                   masks: torch.Tensor, train_rows: Any, val_rows: Any, num_classes: int,
                   ignore_index: int, cfg: SegConfig, options: Any = None,
                   progress: bool = True) -> tuple[Any, Any, dict]:
    """Train ``name`` on ``keys``; returns (head, options used, log dict)."""
    device = torch.device(cfg.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(head_seed(cfg.seed, keys[0], name))
        head, opts = build_seg_head(name, shapes, num_classes, masks.shape[-1], options)
    head.to(device)
    lr = LR[name] if cfg.lr is None else float(cfg.lr)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    steps = max(1, math.ceil(len(train_rows) / cfg.batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.epochs * steps, steps))
    views = [(k, MAP) for k in keys]
    best: dict[str, Any] = dict(miou=-1.0, epoch=None, state=None)
    epochs_run, start = 0, time.perf_counter()
    bar = tqdm(range(cfg.epochs), desc=name, unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        head.train()
        for xs, r in src.epoch_batches(train_rows, cfg.batch_size, cfg.seed, epoch, views,
                                       device=device):
            opt.zero_grad(set_to_none=True)
            _loss(head, [xs[v] for v in views], masks[r].long(), ignore_index).backward()
            opt.step()
            sched.step()
        epochs_run = epoch + 1
        if len(val_rows) and (cfg.patience or epoch + 1 == cfg.epochs):
            stats, _ = evaluate(head, src, masks, val_rows, keys, num_classes, ignore_index,
                                cfg.batch_size, device)
            miou = scores_from_totals(stats.sum(0))["miou"]
            if miou > best["miou"] or not cfg.patience:
                best = dict(miou=miou, epoch=epoch + 1,
                            state={k: v.detach().clone() for k, v in head.state_dict().items()})
            bar.set_postfix(val_miou=f"{miou:.3f}")
            if cfg.patience and epoch + 1 - best["epoch"] >= cfg.patience:
                break
    bar.close()
    if best["state"] is not None:
        head.load_state_dict(best["state"])
    log = dict(lr=lr, val_miou=None if best["epoch"] is None else best["miou"],
               selected_epoch=best["epoch"] or epochs_run, epochs_run=epochs_run,
               train_time_s=round(time.perf_counter() - start, 3))
    return copy.deepcopy(head).eval(), opts, log
