"""Mutual k-NN alignment and CKNNA (Huh et al. 2024, "The Platonic Representation
Hypothesis", and their reference code) for :func:`probe.measures.similarity`.

Neighbours are by cosine similarity of the flattened features (Huh et al. normalise each
sample to unit length, then take inner products); a sample is never its own neighbour.

- ``mutual-knn``: for each sample, the fraction of its k neighbours in one representation
  that are also among its k neighbours in the other; averaged over the samples.  Chance
  level k/(n-1).
- ``cknna``: CKA restricted to mutual neighbours.  With K, L the cosine Gram matrices and
  M_ij = 1 when j is among i's k neighbours in both, CKNNA = HSIC(M*K, M*L) /
  sqrt(HSIC(M_K*K, M_K*K) HSIC(M_L*L, M_L*L)), HSIC being Song et al.'s unbiased one as
  their code writes it: (sum(K~ * L~^T) + sum(K~) sum(L~)/((n-1)(n-2))
  - 2 * 1^T K~ L~ 1/(n-2)) / (n(n-3)).  M is not symmetric, so neither is CKNNA, quite.

Every term needs only the k neighbours of each sample, so a permutation of one side
relabels that side's neighbour lists (computed once) and costs O(n k).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from .pairs import Options
    from .reading import Raw

SORT_ROWS = 256  # rows with a tie, sorted at once


@dataclass
class Side:
    nbr: torch.Tensor           # (n, k) each sample's neighbours, nearest first
    vals: torch.Tensor          # (n, k) their cosine similarities
    near: torch.Tensor          # (n, n) bool: j is one of i's neighbours
    knear: torch.Tensor | None  # (n, n) cosine similarity where near, else 0 (CKNNA)
    sim: torch.Tensor | None    # (n, n) cosine similarities, kept for the bootstrap
    self_hsic: float            # CKNNA's HSIC of the side with itself
    constant: bool


def needs_features(opts: Options, n: int, dims: int) -> bool:
    return False


def cosine(gram: torch.Tensor) -> torch.Tensor:
    norm = gram.diagonal().sqrt().clamp_min(1e-12)  # torch's normalize: a zero vector stays zero
    return gram / torch.outer(norm, norm)


def _side(sim, opts, same=None, keep=False, constant=False):
    """Neighbour lists from cosine similarities; ``same`` masks pairs that may not be
    neighbours (by default each sample with itself)."""
    s = sim.clone()
    if same is None:
        s.fill_diagonal_(-torch.inf)
    else:
        s.masked_fill_(same, -torch.inf)
    vals, nbr = _nearest(s, opts.k)
    del s
    near = torch.zeros(sim.shape, dtype=torch.bool, device=sim.device).scatter_(1, nbr, True)
    cknna = opts.metric == "cknna"
    knear = torch.zeros_like(sim).scatter_(1, nbr, vals) if cknna else None
    side = Side(nbr, vals, near, knear, sim if keep else None, 0.0, constant)
    if cknna:
        side.self_hsic = float(_hsic(side, side)[0])
    return side


def _nearest(s, k):
    """The k largest of each row and their columns.  Ties across the k-th place go to the
    lower column, so that the copies of a sample in a bootstrap resample are picked alike
    in both representations: the rows with such a tie are sorted stably (the rest keep
    torch's faster topk, whose order among ties is arbitrary but whose set is not)."""
    vals, cols = s.topk(min(k + 1, s.shape[1]), dim=1)
    tied: torch.Tensor | list[Any] = (torch.nonzero(vals[:, k - 1] == vals[:, -1]).flatten()
                                      if vals.shape[1] > k else [])
    vals, cols = vals[:, :k].clone(), cols[:, :k].clone()
    for i in range(0, len(tied), SORT_ROWS):
        rows = tied[i:i + SORT_ROWS]
        v, j = s[rows].sort(dim=1, descending=True, stable=True)
        vals[rows], cols[rows] = v[:, :k], j[:, :k]
    return vals, cols


def prepare(raw: Raw, opts: Options) -> Side:
    assert raw.gram is not None  # read without features (needs_features)
    return _side(cosine(raw.gram), opts, keep=opts.bootstrap, constant=raw.constant)


def _relabel(b, perms):
    """``b``'s neighbour lists when the sample at position i is ``b``'s sample perms[i]:
    (neighbours as positions (c, n, k), as b's own samples (c, n, k), b's sample at each
    position (c, n))."""
    if perms is None:
        own = torch.arange(len(b.nbr), device=b.nbr.device)[None]
        return b.nbr[None], b.nbr[None], own
    inv = torch.argsort(perms, 1)
    orig = b.nbr[perms]
    pos = torch.gather(inv, 1, orig.reshape(len(perms), -1)).reshape(orig.shape)
    return pos, orig, perms


def _mutual(a, b, perms):
    j, _, _ = _relabel(b, perms)
    n, k = a.nbr.shape
    i = torch.arange(n, device=j.device)[None, :, None]
    return a.near[i, j].sum((1, 2)).double() / (n * k)


def _hsic(a, b, perms=None):
    """Unbiased HSIC of M*K and M*L, M the mutual-neighbour mask (c,)."""
    j, orig, own = _relabel(b, perms)
    n, c = len(a.nbr), len(j)
    i = torch.arange(n, device=j.device)[None, :, None]
    both = a.near[i, j]  # (i, j) is in M: j is also i's neighbour in a
    kv = torch.where(both, a.knear[i, j], 0.0)
    lv = torch.where(both, b.vals[own], 0.0)
    # (j, i) is in M too: i is among j's neighbours in a, and in b (b's own samples)
    back = a.near[j, i] & b.near[orig, own[:, :, None]]
    trace = (kv * lv * back).sum((1, 2))                  # sum(K~ * L~^T), K and L symmetric
    colk = torch.zeros(c, n, dtype=kv.dtype, device=kv.device)
    colk.scatter_add_(1, j.reshape(c, -1), kv.reshape(c, -1))
    middle = (colk * lv.sum(2)).sum(1)                    # 1^T K~ L~ 1
    total = kv.sum((1, 2)) * lv.sum((1, 2)) / ((n - 1) * (n - 2))
    return (trace + total - 2 * middle / (n - 2)) / (n * (n - 3))


def score(a: Side, b: Side, opts: Options, perms: torch.Tensor | None = None) -> np.ndarray:
    """The measure of ``a`` with ``b`` (numpy (1,)), or with ``b``'s samples shuffled by
    each row of ``perms`` ((c,)).  A representation that never varies has no neighbours to
    speak of: 0."""
    c = 1 if perms is None else len(perms)
    if a.constant or b.constant:
        return np.zeros(c)
    if opts.metric == "mutual-knn":
        return _mutual(a, b, perms).cpu().numpy()
    denom = a.self_hsic * b.self_hsic
    if denom <= 0:
        return np.zeros(c)
    return (_hsic(a, b, perms) / math.sqrt(denom)).cpu().numpy()


def resample(a: Side, b: Side, opts: Options, idx: torch.Tensor) -> float:
    """The measure on the bootstrap sample ``idx``; copies of one sample are not each
    other's neighbours (they would be in both representations, at distance 0)."""
    same = idx[:, None] == idx[None, :]
    sides = []
    for s in (a, b):
        assert s.sim is not None  # kept by prepare for a bootstrap
        sides.append(_side(s.sim[idx][:, idx], opts, same, constant=s.constant))
    return float(score(sides[0], sides[1], opts)[0])
