"""Orthogonal Procrustes distance and SVCCA for :func:`probe.measures.similarity`.

- ``procrustes`` (Ding, Denain & Steinhardt 2021, "Grounding representation similarity
  with statistical testing"): centre X and Y, divide each by its Frobenius norm, then
  d = min over orthogonal R of ||X - Y R||_F^2 = 2 - 2 ||X^T Y||_* (nuclear norm).  A
  distance: 0 for representations equal up to rotation, shift and scale, at most 2.
- ``svcca`` (Raghu et al. 2017): centre, keep the top singular directions of each that
  explain 99 % of its variance, and average the canonical correlations of the two
  reduced representations.  CCA sees only the spans, so these are the singular values
  of U_x^T U_y, U the kept left singular vectors.

Both see a representation only up to a rotation of its features, so each key is reduced
once to a factor F (n x r, r <= min(n, p)) with F F^T = X_c X_c^T: from the SVD of the
features when p <= n, else from the eigenvectors of the Gram matrix.  A permutation of
one side permutes the rows of its factor.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .reading import Raw, centred

if TYPE_CHECKING:
    from .pairs import Options

VARIANCE = 0.99  # SVCCA keeps the directions that explain this much of the variance


@dataclass
class Side:
    factor: torch.Tensor  # (n, r) centred: the features up to a rotation (resampled by the bootstrap)
    basis: torch.Tensor   # Procrustes: factor / its Frobenius norm; SVCCA: the kept directions
    constant: bool


def needs_features(opts: Options, n: int, dims: int) -> bool:
    """Fewer features than samples: an SVD of the features beats an n x n eigenproblem."""
    return dims <= n


def _factor(raw):
    """Left singular vectors and singular values of the centred features (rank only)."""
    if raw.x is not None:
        u, s, _ = torch.linalg.svd(raw.x - raw.x.mean(0), full_matrices=False)
    else:
        lam, u = torch.linalg.eigh(centred(raw.gram))
        lam, u = lam.flip(0), u.flip(1)
        s = lam.clamp_min(0).sqrt()
    keep = s > s[0] * 1e-10 if len(s) and s[0] > 0 else torch.zeros_like(s, dtype=torch.bool)
    return u[:, keep], s[keep]


def prepare(raw: Raw, opts: Options) -> Side:
    u, s = _factor(raw)
    constant = raw.constant or len(s) == 0
    factor = u * s
    if opts.metric == "procrustes":
        basis = factor / s.square().sum().sqrt() if not constant else factor
    else:
        share = torch.cumsum(s.square(), 0) / s.square().sum()
        kept = int(torch.searchsorted(share, share.new_tensor(VARIANCE))) + 1
        basis = u[:, :min(kept, len(s))]
    return Side(factor, basis, constant)


def score(a: Side, b: Side, opts: Options, perms: torch.Tensor | None = None) -> np.ndarray:
    """The measure of ``a`` with ``b`` (numpy (1,)), or with ``b``'s samples shuffled by
    each row of ``perms`` ((c,)).  A representation that never varies is as far as can be:
    Procrustes 2, SVCCA 0."""
    c = 1 if perms is None else len(perms)
    if a.constant or b.constant:
        return np.full(c, 2.0 if opts.metric == "procrustes" else 0.0)
    yb = b.basis[None] if perms is None else b.basis[perms]
    sv = torch.linalg.svdvals(torch.einsum("nr,cnq->crq", a.basis, yb))
    if opts.metric == "procrustes":
        return (2 - 2 * sv.sum(1)).clamp_min(0).cpu().numpy()
    return sv.clamp_max(1).mean(1).cpu().numpy()


def resample(a: Side, b: Side, opts: Options, idx: torch.Tensor) -> float:
    """The measure on the bootstrap sample ``idx``: the factors' rows are the samples."""
    sides = [prepare(Raw(s.factor.shape[1], s.constant, x=s.factor[idx]), opts) for s in (a, b)]
    return float(score(sides[0], sides[1], opts)[0])
