"""Block outputs as spatial maps: the one place token sequences are laid on their grid.

Shared by the extractors (``Extractor.to_map``) and the pipeline's pooling, which must not
import the extractors for it.  Needs no torch import: it only calls tensor methods.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .errors import ProbeError

if TYPE_CHECKING:
    import torch


def to_map(feature: torch.Tensor) -> torch.Tensor:
    """Block output -> spatial map (B, C, H, W).  Token sequences (B, N, D) on a square
    grid are reshaped to (B, D, sqrt N, sqrt N); prefix tokens must be dropped first."""
    if feature.dim() == 4:
        return feature
    if feature.dim() == 3:
        b, n, d = feature.shape
        side = math.isqrt(n)
        if side * side != n:
            raise ProbeError(f"cannot lay {n} tokens on a square grid")
        return feature.transpose(1, 2).reshape(b, d, side, side)
    raise ProbeError(f"cannot make a spatial map from a feature of shape {tuple(feature.shape)}")
