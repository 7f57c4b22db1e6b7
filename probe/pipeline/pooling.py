"""How block outputs are reduced before caching.

``mean``: global average over the spatial grid -> (C,); on token outputs, the mean of
the patch tokens (class and register tokens excluded).
``cls``: the class token -> (C,) (ViT-like networks with a class token).
``avgK``: adaptive average pool to K x K -> (C, K, K) (keeps a map for CNN/attention heads).
``none``: the full map -> (C, H, W).
Token sequences (DiT, l-DAE, ViTs) are first laid on their (C, h, w) patch grid, without
their prefix tokens, so every pooling but ``cls`` works for every family.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ..errors import ProbeError

if TYPE_CHECKING:
    import torch

POOL_HELP = ("mean | avgK (e.g. avg4: adaptive average pool to 4x4) | none | cls (ViTs: the "
             "class token)")


def parse_pool(pool: object) -> str:
    pool = str(pool).strip().lower()
    if pool in ("mean", "none", "cls"):
        return pool
    m = re.fullmatch(r"avg(\d+)", pool)
    if m and int(m.group(1)) > 0:
        return pool
    raise ProbeError(f"bad --pool {pool!r}: use {POOL_HELP}")


def apply_pool(feature: torch.Tensor, pool: str, prefix_tokens: int = 0) -> torch.Tensor:
    """Pool one block output (B, C, H, W) or tokens (B, N, D); ``prefix_tokens``: how many
    tokens come before the patch grid (the network's class/register tokens)."""
    # imported here: the CLI reads POOL_HELP and parse_pool for `--help` without torch
    import torch.nn.functional as F

    from ..tokens import to_map

    if feature.dim() == 2:  # already a vector (a classifier's pre-logits): nothing to pool
        return feature
    if pool == "cls":
        if feature.dim() != 3 or prefix_tokens < 1:
            raise ProbeError(f"--pool cls needs a class token: this block gives "
                             f"{tuple(feature.shape[1:])} with {prefix_tokens} prefix tokens; "
                             "use mean, avgK or none")
        return feature[:, 0]
    if feature.dim() == 3 and prefix_tokens:
        feature = feature[:, prefix_tokens:]
    fmap = to_map(feature)
    if pool == "mean":
        return fmap.mean(dim=(2, 3))
    if pool == "none":
        return fmap
    k, (h, w) = int(pool[3:]), fmap.shape[2:]
    if k > min(h, w):
        # adaptive pooling would copy values up to K x K: a larger map with nothing new in it
        raise ProbeError(f"--pool {pool} is larger than a {h}x{w} block map: use avgK with K at "
                         f"most {min(h, w)}, or none")
    return F.adaptive_avg_pool2d(fmap, k)
