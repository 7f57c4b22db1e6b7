"""The l-DAE tokenizer: patch-wise PCA fitted on randomly sampled training patches.

Patches sit on the same non-overlapping grid the tokenizer uses.  The basis is the
eigendecomposition (in float64) of their covariance, components in order of
decreasing variance, each signed so that its largest-magnitude entry is positive.
"""
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..errors import ProbeError
from ..extractors.ldae.tokenizer import patchify


def sample_patches(images: Any, patch_size: int, num_patches: int, seed: int,
                   transform: Callable[[torch.Tensor], torch.Tensor] | None = None, chunk: int = 1024
                   ) -> torch.Tensor:
    """``num_patches`` (image, grid position) pairs drawn uniformly with replacement.

    ``images``: a tensor (N, C, S, S), or anything with ``len`` whose ``[index array]``
    gives such a tensor (only the images drawn are loaded); ``transform`` maps them to
    the space the tokenizer works in.  Returns float64 patches (num_patches, C*p*p).
    """
    rng = np.random.default_rng([seed, 0x9CA])
    which = rng.integers(0, len(images), num_patches)
    where = torch.as_tensor(rng.integers(0, 2 ** 62, num_patches))
    out: Any = None  # made at the first chunk, when the patch width is known
    unique = np.unique(which)
    for start in range(0, len(unique), chunk):  # bounded memory for large images
        ids = unique[start:start + chunk]
        batch = images[torch.as_tensor(ids)]
        batch = transform(batch) if transform is not None else batch
        grid = patchify(batch, patch_size)                       # (k, N_patches, D)
        rows = np.nonzero(np.isin(which, ids))[0]
        local = torch.as_tensor(np.searchsorted(ids, which[rows]))
        picked = grid[local, where[rows] % grid.shape[1]].double()
        if out is None:
            out = torch.empty(num_patches, grid.shape[2], dtype=torch.float64)
        out[torch.as_tensor(rows)] = picked
    return out


def fit_pca(patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Patches (n, D) -> (mean (D,), components (D, D) as rows, variance (D,)), float64."""
    patches = torch.as_tensor(patches, dtype=torch.float64)
    n, D = patches.shape
    if n < 2:
        raise ProbeError("the PCA tokenizer needs at least 2 patches: raise --pca-patches")
    mean = patches.mean(0)
    centered = patches - mean
    cov = centered.T @ centered / (n - 1)
    variance, vectors = torch.linalg.eigh(cov)           # ascending
    variance, components = variance.flip(0).clamp_min(0), vectors.T.flip(0)
    peak = components.abs().argmax(dim=1)
    sign = torch.sign(components[torch.arange(D), peak])
    return mean, components * sign[:, None], variance


def fit_patch_pca(images: Any, patch_size: int, num_patches: int = 50000, seed: int = 0,
                  transform: Callable[[torch.Tensor], torch.Tensor] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample patches of ``images`` (see :func:`sample_patches`) and fit their PCA."""
    return fit_pca(sample_patches(images, patch_size, num_patches, seed, transform))


__all__ = ["sample_patches", "fit_pca", "fit_patch_pca"]
