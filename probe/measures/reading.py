"""One (t, block) key in memory, for the measures of :func:`probe.measures.similarity`.

The measures compare the n samples' representations, each flattened to a vector.  What
they need of a key is its Gram matrix X X^T (raw, uncentred, float64: cosine neighbours
and the correlation RDM need the raw inner products) with each sample's feature sum, or,
for Procrustes and SVCCA when a sample has fewer features than there are samples, the
features themselves.  Rows are read through the sources of grid.py, so large keys come
in channel slabs and memory stays at one n x n matrix (or the n x p features).
"""
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .core import CONSTANT_TOL


@dataclass
class Raw:
    """A key on the chosen samples: ``gram`` (n, n) and ``sums`` (n,), or ``x`` (n, p)."""

    dims: int
    constant: bool
    gram: torch.Tensor | None = None
    sums: torch.Tensor | None = None
    x: torch.Tensor | None = None


def dims(src: Any, pos: int) -> int:
    """Features per sample of key ``pos`` of a source."""
    shapes = src.dsets if hasattr(src, "dsets") else src.arrays
    return int(np.prod(shapes[pos].shape[1:]))


def centred(gram: torch.Tensor) -> torch.Tensor:
    """H G H, the Gram matrix of the features minus their mean over the samples."""
    r = gram.mean(1)
    return gram - r[:, None] - r[None, :] + r.mean()


def read(src: Any, pos: int, rows: np.ndarray, device: torch.device, features: bool = False
         ) -> Raw:
    """Key ``pos`` of ``src`` on sample rows ``rows`` (in that order) as a :class:`Raw`:
    the features when ``features``, else the Gram matrix and per-sample sums."""
    parts = (torch.as_tensor(np.asarray(p)) if not torch.is_tensor(p) else p
             for p in src.slabs([pos], rows))
    parts = (p.to(device=device, dtype=torch.float64).reshape(len(rows), -1) for p in parts)
    if features:
        x = torch.cat(list(parts), 1)
        xc = x - x.mean(0)
        return Raw(x.shape[1], _flat(xc.square().sum(), x.square().sum()), x=x)
    gram: Any = None  # sums of the slabs' products
    sums: Any = None
    for x in parts:
        g, s = x @ x.T, x.sum(1)
        gram, sums = (g, s) if gram is None else (gram + g, sums + s)
    # exactly symmetric, so that the pairs (i, j) and (j, i) tie (a product need not be)
    gram = (gram + gram.T) / 2
    # the spread around the mean is trace(H G H); the raw size is trace(G)
    spread = gram.trace() - gram.sum() / len(rows)
    return Raw(dims(src, pos), _flat(spread, gram.trace()), gram=gram, sums=sums)


def _flat(spread, size):
    """Features that do not vary over the samples, up to float rounding around a constant."""
    return bool(spread <= CONSTANT_TOL * size)
