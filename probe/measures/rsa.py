"""Representational similarity analysis (RSA) for :func:`probe.measures.similarity`.

Each representation gives a representational dissimilarity matrix (RDM) over the n
samples: 1 - the Pearson correlation of two samples' feature vectors (``rdm="correlation"``,
the default) or their Euclidean distance (``"euclidean"``).  RSA is the correlation of
two RDMs' upper triangles: Spearman (``rsa_corr="spearman"``, default) or Pearson.

Shuffling one side's samples only moves its RDM entries between pairs (a Mantel test), so
each side's triangle is ranked and standardised once; a permutation's RSA is then an
inner product with the other side's, and a chunk of permutations is one matrix product.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.stats import rankdata

from .core import CONSTANT_TOL
from .reading import Raw, centred

if TYPE_CHECKING:
    from .pairs import Options


@dataclass
class Side:
    rdm: torch.Tensor  # (n, n) dissimilarities, zero diagonal (resampled by the bootstrap)
    z: torch.Tensor    # the upper triangle ranked (Spearman) and standardised, as a symmetric matrix
    constant: bool     # every pair is as dissimilar as every other: no correlation to take


def needs_features(opts: Options, n: int, dims: int) -> bool:
    return False


def dissimilarities(raw: Raw, kind: str) -> torch.Tensor:
    g = raw.gram
    assert g is not None and raw.sums is not None  # read without features (needs_features)
    if kind == "correlation":
        # inner products of the samples, each centred over its own features
        c = g - torch.outer(raw.sums, raw.sums) / raw.dims
        var = c.diagonal()
        # a sample whose features are all equal correlates with nothing: dissimilarity 1
        scale = torch.where(var > CONSTANT_TOL * g.diagonal(), var, torch.inf).sqrt()
        d = 1 - c / torch.outer(scale, scale)
    else:
        gc = centred(g)
        sq = gc.diagonal()
        d = (sq[:, None] + sq[None, :] - 2 * gc).clamp_min(0).sqrt()
    d.fill_diagonal_(0)
    return d


def _standardised(v, spearman):
    """Ranks (ties averaged) or values, minus their mean, over their standard deviation;
    None when they are all equal."""
    v = np.asarray(v, dtype=np.float64)
    if spearman:
        v = rankdata(v)
    size = np.abs(v).max()
    v = v - v.mean()
    sd = np.sqrt(np.mean(v * v))
    # rounding noise around one value is no spread
    return v / sd if sd > 1e-12 * size else None


def _side(d, opts):
    n = len(d)
    i, j = torch.triu_indices(n, n, 1, device=d.device)
    z = _standardised(d[i, j].cpu().numpy(), opts.rsa_corr == "spearman")
    zm = torch.zeros_like(d)
    if z is not None:
        zm[i, j] = torch.as_tensor(z, device=d.device)
        zm = zm + zm.T
    return Side(d, zm, z is None)


def prepare(raw: Raw, opts: Options) -> Side:
    return _side(dissimilarities(raw, opts.rdm), opts)


def score(a: Side, b: Side, opts: Options, perms: torch.Tensor | None = None) -> np.ndarray:
    """RSA of ``a`` with ``b`` (numpy (1,)), or with ``b``'s samples shuffled by each row of
    ``perms`` ((c,)).  The mean over the n(n-1) off-diagonal entries of z_a z_b is the
    correlation of the triangles."""
    n = len(a.z)
    if a.constant or b.constant:
        return np.zeros(1 if perms is None else len(perms))
    zb = b.z[None] if perms is None else b.z[perms[:, :, None], perms[:, None, :]]
    return (zb.reshape(len(zb), -1) @ a.z.reshape(-1) / (n * (n - 1))).cpu().numpy()


def resample(a: Side, b: Side, opts: Options, idx: torch.Tensor) -> float:
    """RSA on the bootstrap sample ``idx``, over the pairs of two different samples (a
    sample drawn twice is no pair: its zero dissimilarity with itself would count as
    agreement)."""
    n = len(idx)
    i, j = torch.triu_indices(n, n, 1, device=a.rdm.device)
    keep = idx[i] != idx[j]
    i, j = idx[i[keep]], idx[j[keep]]
    spearman = opts.rsa_corr == "spearman"
    za, zb = (_standardised(s.rdm[i, j].cpu().numpy(), spearman) for s in (a, b))
    return 0.0 if za is None or zb is None else float(np.mean(za * zb))
