"""How block outputs are reduced before caching.

``mean``: global average over the spatial grid -> (C,).
``avgK``: adaptive average pool to K x K -> (C, K, K) (keeps a map for CNN/attention heads).
``none``: the full map -> (C, H, W).
DiT and l-DAE token sequences are first laid on their (C, h, w) grid, so every
pooling works for every family.
"""
import re

import torch.nn.functional as F

from .errors import ProbeError
from .extractors.base import Extractor

POOL_HELP = "mean | avgK (e.g. avg4: adaptive average pool to 4x4) | none"


def parse_pool(pool):
    pool = str(pool).strip().lower()
    if pool in ("mean", "none"):
        return pool
    m = re.fullmatch(r"avg(\d+)", pool)
    if m and int(m.group(1)) > 0:
        return pool
    raise ProbeError(f"bad --pool {pool!r}: use {POOL_HELP}")


def apply_pool(feature, pool):
    fmap = Extractor.to_map(feature)
    if pool == "mean":
        return fmap.mean(dim=(2, 3))
    if pool == "none":
        return fmap
    return F.adaptive_avg_pool2d(fmap, int(pool[3:]))


def pooled_shape(map_shape, pool):
    """Per-sample shape after pooling a (C, H, W) map."""
    c = map_shape[0]
    if pool == "mean":
        return (c,)
    if pool == "none":
        return tuple(map_shape)
    k = int(pool[3:])
    return (c, k, k)
