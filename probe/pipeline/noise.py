"""Reproducible noise: each sample's noise is a function of (seed, sample id, t, draw).

Drawing per sample, on the CPU, from a generator seeded by a hash of those four
values makes features independent of batch size, order, workers, processes and
device: a sample gets the same noise however the dataset is split up.
"""
import hashlib
from collections.abc import Sequence
from typing import Any

import torch

from ..selection import t_text


def sample_seed(seed: int, sample_id: Any, t: float, draw: int = 0) -> int:
    # t as written in key labels: integer steps hash as before, 0.1 and 0.5 differ
    key = f"{int(seed)}|{sample_id}|{t_text(t)}|{int(draw)}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def per_sample_noise(shape: Sequence[int], seed: int, ids: Sequence[Any], t: float, draw: int = 0,
                     device: str | torch.device | None = None,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise of shape (len(ids), *shape), one generator per sample."""
    g = torch.Generator()
    out = torch.empty((len(ids), *shape), dtype=torch.float32)
    for i, sid in enumerate(ids):
        g.manual_seed(sample_seed(seed, sid, t, draw))
        torch.randn(shape, generator=g, out=out[i])
    return out.to(device=device, dtype=dtype)
