"""CKA estimators on Gram matrices, for many representations at once.

Every representation (one (t, block) key) gets one Gram matrix per batch.  The Gram is
centred once -- double centring H K H for the biased HSIC of Kornblith et al. 2019, or
U-centring for the unbiased HSIC of Song et al. 2012 -- and flattened.  HSIC between two
representations is then an inner product of centred Grams, so stacking them into a
(keys, n*n) matrix gives every pair with one matmul::

    biased:    HSIC(K, L) = <HKH, HLH> / (n-1)^2
    unbiased:  HSIC(K, L) = <U(K), U(L)> / (n (n-3))     (Szekely & Rizzo 2014, Prop. 1)

The minibatch estimator (Nguyen, Raghu & Kornblith 2021) sums per-batch HSICs before
taking CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)).  All of that is float64 on the
chosen device; only the feature product X X^T uses ``dtype`` (float32 by default, the
precision features are stored in).
"""
from dataclasses import dataclass

import numpy as np
import torch

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
    def min_batch(self):
        return 4 if self.unbiased else 2

    def hsic_scale(self, n):
        return 1.0 / (n * (n - 3)) if self.unbiased else 1.0 / (n - 1) ** 2


def make_estimator(kernel="linear", sigma=1.0, unbiased=False, device="cpu", dtype=None):
    if kernel not in KERNELS:
        raise ProbeError(f"unknown CKA kernel {kernel!r}: use one of {', '.join(KERNELS)}")
    if kernel == "rbf" and not (np.isfinite(sigma) and sigma > 0):
        raise ProbeError(f"RBF sigma must be a positive fraction of the median distance, got {sigma}")
    device = _device(device)
    if dtype is None:
        dtype = torch.float32
    elif isinstance(dtype, str):
        if dtype not in ("float32", "float64"):
            raise ProbeError(f"unknown CKA dtype {dtype!r}: use float32 or float64")
        dtype = getattr(torch, dtype)
    return Estimator(kernel, float(sigma), bool(unbiased), dtype, device)


def _device(device):
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ProbeError(f"bad device {device!r}: use cpu, cuda or cuda:N") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ProbeError(f"device {device} requested but CUDA is not available: use --device cpu")
    return device


def feature_gram(parts, est):
    """X_c X_c^T (float64) of one batch, X given as column slabs (arrays of shape (n, ...)),
    and a 0-d bool tensor saying whether the batch is constant.  Centring first keeps the
    float32 product accurate (HSIC is unchanged by it).  No host sync: the GPU keeps going."""
    gram, size = None, 0.0
    for part in parts:
        x = torch.as_tensor(np.asarray(part)).to(est.device)
        x = x.reshape(len(x), -1).to(est.dtype)
        size = size + torch.sum(x * x, dtype=torch.float64)
        x = x - x.mean(0, keepdim=True)
        g = (x @ x.T).double()
        gram = g if gram is None else gram + g
    return gram, gram.diagonal().sum() <= CONSTANT_TOL * size


def _median_offdiag(d):
    """Median of the distinct-pair entries (numpy's median: mean of the two middle ones)."""
    n = len(d)
    i, j = torch.triu_indices(n, n, 1, device=d.device)
    v = d[i, j]
    m = len(v)
    lo = torch.kthvalue(v, (m - 1) // 2 + 1).values
    hi = torch.kthvalue(v, m // 2 + 1).values
    return (lo + hi) / 2


def kernel_matrix(gram, est):
    """The kernel from the (centred) linear Gram: itself, or the RBF with
    sigma = est.sigma * median pairwise Euclidean distance in the batch."""
    if est.kernel == "linear":
        return gram
    sq = gram.diagonal()
    d2 = (sq[:, None] + sq[None, :] - 2 * gram).clamp_min_(0)
    med = _median_offdiag(d2.sqrt())
    width = 2 * (est.sigma * med) ** 2
    # most samples coincide: no bandwidth to speak of, so the kernel is constant
    ok = width > 0
    return torch.where(ok, torch.exp(-d2 / torch.where(ok, width, 1.0)), 1.0)


def center(k, unbiased):
    """H K H, or the U-centred K (zero diagonal); both in place on a float64 matrix."""
    n = len(k)
    if not unbiased:
        k -= k.mean(0, keepdim=True)
        k -= k.mean(1, keepdim=True)
        return k
    k.fill_diagonal_(0)
    r = k.sum(1)
    total = r.sum()
    k -= r[:, None] / (n - 2)
    k -= r[None, :] / (n - 2)
    k += total / ((n - 1) * (n - 2))
    k.fill_diagonal_(0)
    return k


def centred_kernel(parts, est):
    """The flattened centred kernel of one representation on one batch (float64, n*n);
    exactly zero for a constant batch."""
    gram, constant = feature_gram(parts, est)
    u = center(kernel_matrix(gram, est), est.unbiased).reshape(-1)
    return torch.where(constant, 0.0, u)


class HSICAccumulator:
    """Sums per-batch HSIC for every (row, column) pair and the self terms, in float64.

    ``add(ga, gb)`` takes the stacked centred kernels of one batch, (Ka, n*n) and
    (Kb, n*n); ``gb=None`` means the columns are the rows (one file), and then one
    matmul ``ga @ ga.T`` gives cross and self terms together.  Each batch is weighted by
    its size, so a shorter last batch counts for less.
    """

    def __init__(self, est):
        self.est = est
        self.cross = self.self_a = self.self_b = None
        self.batches = 0

    def add(self, ga, gb=None):
        n = int(round(ga.shape[1] ** 0.5))
        w = n * self.est.hsic_scale(n)
        cross = ga @ (ga if gb is None else gb).T * w
        sa = cross.diagonal().clone() if gb is None else ga.square().sum(1) * w
        sb = sa if gb is None else gb.square().sum(1) * w
        if self.cross is None:
            self.cross, self.self_a, self.self_b = cross, sa, sb
        else:
            self.cross += cross
            self.self_a += sa
            if gb is not None:
                self.self_b += sb
        self.batches += 1

    def cka(self):
        """(matrix, constant rows, constant columns) as numpy; pairs with a
        representation that never varied are defined as 0."""
        cross, sa, sb = (t.double().cpu().numpy() for t in (self.cross, self.self_a, self.self_b))
        dead_a, dead_b = sa <= 0, sb <= 0
        denom = np.sqrt(np.outer(np.where(dead_a, 1, sa), np.where(dead_b, 1, sb)))
        out = cross / denom
        out[dead_a, :] = 0.0
        out[:, dead_b] = 0.0
        return out, dead_a, dead_b
