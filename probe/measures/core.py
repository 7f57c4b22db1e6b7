"""CKA estimators on Gram matrices, for many representations at once.

Every representation (one (t, block) key) gets one kernel matrix per batch, computed
once.  HSIC between two representations is an inner product of centred kernels, so with
the kernels of a batch stacked into a (keys, n*n) matrix one matmul gives every pair;
the centring is folded in through row sums (see :class:`HSICAccumulator`):

- biased HSIC, tr(K H L H) / (n-1)^2 -- Kornblith et al. 2019;
- unbiased HSIC -- Song et al. 2012, as used by Nguyen, Raghu & Kornblith 2021.

The minibatch estimator sums per-batch HSICs before taking
CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)).  Everything after the feature product
X X^T is float64 on the chosen device; that product uses ``dtype`` (float32 by default,
the precision features are stored in, on mean-centred features so nothing cancels).
"""
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..device import resolve_device
from ..errors import ProbeError

KERNELS = ("linear", "rbf")
# a batch whose feature variance is below this fraction of the features' mean square is
# rounding noise around a constant: its centred kernel is set to exactly zero
CONSTANT_TOL = 1e-10


@dataclass(frozen=True)
class Estimator:
    """How CKA is estimated; see docs/cka.md."""

    kernel: str = "linear"
    sigma: float = 1.0  # RBF bandwidth as a fraction of the median pairwise distance
    unbiased: bool = False
    dtype: torch.dtype = torch.float32
    device: torch.device = torch.device("cpu")

    @property
    def min_batch(self) -> int:
        return 4 if self.unbiased else 2


def make_estimator(kernel: str = "linear", sigma: float = 1.0, unbiased: bool = False,
                   device: str | torch.device | None = "cpu",
                   dtype: str | torch.dtype | None = None) -> Estimator:
    if kernel not in KERNELS:
        raise ProbeError(f"unknown CKA kernel {kernel!r}: use one of {', '.join(KERNELS)}")
    if kernel == "rbf" and not (np.isfinite(sigma) and sigma > 0):
        raise ProbeError(f"RBF sigma must be a positive fraction of the median distance, got {sigma}")
    device = resolve_device(device)
    dtypes = {"float32": torch.float32, "float64": torch.float64, None: torch.float32,
              torch.float32: torch.float32, torch.float64: torch.float64}
    if dtype not in dtypes:
        raise ProbeError(f"unknown CKA dtype {dtype!r}: use float32 or float64")
    dtype = dtypes[dtype]
    return Estimator(kernel, float(sigma), bool(unbiased), dtype, device)


def feature_grams(slabs: Iterable[Any], est: Estimator) -> tuple[torch.Tensor, torch.Tensor]:
    """X_c X_c^T (k, n, n) in ``est.dtype`` for k representations of one batch, and which
    of them are constant (k,).  ``slabs`` yields (k, n, ...) pieces of the features (all
    of them, or column slabs of large rows).  Centring first keeps the float32 product
    accurate (HSIC is unchanged by it).  No host sync, so a GPU never waits."""
    gram: torch.Tensor | None = None
    size: torch.Tensor | float = 0.0
    for part in slabs:
        x = part if torch.is_tensor(part) else torch.from_numpy(np.asarray(part))
        x = x.to(est.device).reshape(x.shape[0], x.shape[1], -1).to(est.dtype)
        mu = x.mean(1, keepdim=True)
        x = x - mu
        g = x @ x.transpose(1, 2)
        gram = g if gram is None else gram + g
        size = size + x.shape[1] * mu.double().square().sum((1, 2))
    assert gram is not None, "no slabs"
    spread = gram.diagonal(dim1=1, dim2=2).sum(1, dtype=torch.float64)
    # sum of squared norms = spread around the mean + n |mean|^2
    return gram, spread <= CONSTANT_TOL * (size + spread)


def _median_offdiag(d):
    """Median of the distinct-pair entries of each (n, n) matrix in d (k, n, n), as numpy
    computes it (mean of the two middle values)."""
    n = d.shape[-1]
    i, j = torch.triu_indices(n, n, 1, device=d.device)
    v = d[:, i, j]
    m = v.shape[1]
    lo = torch.kthvalue(v, (m - 1) // 2 + 1, dim=1).values
    hi = torch.kthvalue(v, m // 2 + 1, dim=1).values
    return (lo + hi) / 2


def kernel_matrices(gram: torch.Tensor, est: Estimator) -> torch.Tensor:
    """Kernels (k, n, n) from the centred linear Grams: themselves, or the RBF (float64)
    with sigma = est.sigma * median pairwise Euclidean distance in the batch."""
    if est.kernel == "linear":
        return gram
    gram = gram.double()
    sq = gram.diagonal(dim1=1, dim2=2)
    d2 = (sq[:, :, None] + sq[:, None, :] - 2 * gram).clamp_min_(0)
    width = (2 * (est.sigma * _median_offdiag(d2.sqrt())) ** 2)[:, None, None]
    # most samples coincide: no bandwidth to speak of, so the kernel is constant
    ok = width > 0
    return torch.where(ok, torch.exp(-d2 / torch.where(ok, width, 1.0)), 1.0)


def kernels_into(slabs: Iterable[Any], est: Estimator, out: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Write k representations' kernels on one batch into ``out`` (float64, (k, n, n); zero
    diagonal for the unbiased HSIC); return their row sums (k, n) and constant flags (k,)."""
    gram, constant = feature_grams(slabs, est)
    out.copy_(kernel_matrices(gram, est))
    if est.unbiased:
        out.diagonal(dim1=1, dim2=2).zero_()
    return out.sum(2), constant


class HSICAccumulator:
    """Sums per-batch HSIC for every (row, column) pair and the self terms, in float64.

    Centring is folded into the pair products: with row sums r and totals s of the
    (zero-diagonal, if unbiased) kernels, for all pairs at once

        biased     <HKH, HLH>   = <K, L> - 2/n r_K.r_L + s_K s_L / n^2
        unbiased   <U(K), U(L)> = <K, L> - 2/(n-2) r_K.r_L + s_K s_L / ((n-1)(n-2))

    (the second is Song et al.'s unbiased HSIC times n(n-3)).  ``add`` takes one batch's
    kernels stacked as (keys, n*n), their row sums (keys, n) and constant flags (keys,);
    without a second stack the columns are the rows (one file) and one matmul gives cross
    and self terms together.  Each batch is weighted by its size.
    """

    def __init__(self, est: Estimator) -> None:
        self.est = est
        # None until the first batch; self_b is self_a (the same tensor) with one file
        self.cross: Any = None
        self.self_a: Any = None
        self.self_b: Any = None
        self.batches = 0

    def _hsic(self, n, inner, rr, ss):
        """n * HSIC from <K, L>, r_K.r_L and s_K s_L (the batch-size weight included)."""
        if self.est.unbiased:
            c1, c2, scale = 2 / (n - 2), 1 / ((n - 1) * (n - 2)), 1 / (n * (n - 3))
        else:
            c1, c2, scale = 2 / n, 1 / n ** 2, 1 / (n - 1) ** 2
        return (inner - c1 * rr + c2 * ss) * (n * scale)

    def add(self, a: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
            b: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> None:
        ka, ra, ca = a
        n = ra.shape[1]
        live_a = (~ca).double()
        sa = ra.sum(1)
        if b is None:
            cross = self._hsic(n, ka @ ka.T, ra @ ra.T, sa[:, None] * sa[None, :])
            cross *= live_a[:, None] * live_a[None, :]
            selfs: tuple[torch.Tensor, ...] = (cross.diagonal().clone(),)
        else:
            kb, rb, cb = b
            live_b = (~cb).double()
            sb = rb.sum(1)
            cross = self._hsic(n, ka @ kb.T, ra @ rb.T, sa[:, None] * sb[None, :])
            cross *= live_a[:, None] * live_b[None, :]
            selfs = tuple(self._hsic(n, torch.linalg.vecdot(k, k), torch.linalg.vecdot(r, r), s * s)
                          * live
                          for k, r, s, live in ((ka, ra, sa, live_a), (kb, rb, sb, live_b)))
        if self.cross is None:
            self.cross, self.self_a = cross, selfs[0]
            self.self_b = selfs[-1]
        else:
            self.cross += cross
            self.self_a += selfs[0]
            if b is not None:
                self.self_b += selfs[1]
        self.batches += 1

    def cka(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(matrix, constant rows, constant columns) as numpy; pairs with a
        representation that never varied are defined as 0."""
        cross, sa, sb = (t.double().cpu().numpy() for t in (self.cross, self.self_a, self.self_b))
        dead_a, dead_b = sa <= 0, sb <= 0
        denom = np.sqrt(np.outer(np.where(dead_a, 1, sa), np.where(dead_b, 1, sb)))
        out = cross / denom
        out[dead_a, :] = 0.0
        out[:, dead_b] = 0.0
        return out, dead_a, dead_b
