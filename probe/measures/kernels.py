"""CKA on full batches for :func:`probe.measures.similarity`: the estimators of core.py
applied to whole kernel matrices, so that a permutation null and a bootstrap reuse them.

- ``cka``: linear kernel, biased HSIC (Kornblith et al. 2019);
- ``cka-unbiased``: linear kernel, unbiased HSIC (Song et al. 2012);
- ``cka-rbf``: RBF kernel with sigma = ``sigma`` x the median distance, biased HSIC.

Shuffling the samples of one side only reorders that side's kernel: with the kernels
made once, HSIC(K, L[p][:, p]) for a chunk of permutations p is one matrix product.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .core import HSICAccumulator, kernel_matrices, make_estimator
from .reading import Raw, centred

if TYPE_CHECKING:
    from .pairs import Options

SETTINGS = {"cka": ("linear", False), "cka-unbiased": ("linear", True), "cka-rbf": ("rbf", False)}


@dataclass
class Side:
    gram: torch.Tensor    # Gram matrix of the centred features (resampled by the bootstrap)
    kernel: torch.Tensor  # what the estimator multiplies; zero diagonal for the unbiased HSIC
    rowsum: torch.Tensor
    constant: bool


def needs_features(opts: Options, n: int, dims: int) -> bool:
    return False


def _estimator(opts):
    kernel, unbiased = SETTINGS[opts.metric]
    return make_estimator(kernel, opts.sigma, unbiased, opts.device, "float64")


def _side(gram, est, constant, same=None):
    """The kernel of a side; ``same`` marks the pairs of two copies of one sample in a
    bootstrap resample, which the unbiased HSIC leaves out as it leaves out (i, i)."""
    k = kernel_matrices(gram[None], est)[0]
    if est.unbiased:
        k = k.clone()
        k.fill_diagonal_(0)
        if same is not None:
            k.masked_fill_(same, 0)
    return Side(gram, k, k.sum(1), constant)


def prepare(raw: Raw, opts: Options) -> Side:
    assert raw.gram is not None  # read without features (needs_features)
    return _side(centred(raw.gram), _estimator(opts), raw.constant)


def score(a: Side, b: Side, opts: Options, perms: torch.Tensor | None = None) -> np.ndarray:
    """CKA of ``a`` with ``b`` (numpy, (1,)), or with ``b``'s samples shuffled by each row
    of ``perms`` ((c,))."""
    est = _estimator(opts)
    if perms is None:
        kb, rb = b.kernel.reshape(1, -1), b.rowsum[None]
    else:
        kb = b.kernel[perms[:, :, None], perms[:, None, :]].reshape(len(perms), -1)
        rb = b.rowsum[perms]
    flags = [torch.full((m,), s.constant, device=s.kernel.device) for s, m in ((a, 1), (b, len(kb)))]
    acc = HSICAccumulator(est)
    acc.add((a.kernel.reshape(1, -1), a.rowsum[None], flags[0]), (kb, rb, flags[1]))
    return acc.cka()[0][0]


def resample(a: Side, b: Side, opts: Options, idx: torch.Tensor) -> float:
    """CKA on the bootstrap sample ``idx`` (the RBF bandwidth is the resample's median).
    The biased HSIC counts a copy like any sample (so it sees fewer distinct samples and
    grows, see docs/cka.md); the unbiased one leaves pairs of copies out."""
    est = _estimator(opts)
    same = idx[:, None] == idx[None, :]
    ra, rb = (_side(s.gram[idx][:, idx], est, s.constant, same) for s in (a, b))
    return float(score(ra, rb, opts)[0])
