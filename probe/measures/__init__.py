"""CKA between blocks and timesteps, within one feature file or between two.

- :func:`cka` -- the grid over (t, block) keys of feature files (what `probe cka` runs).
- :func:`cka_matrix` -- the same estimators on in-memory arrays or tensors.

See docs/cka.md for the estimators and what the options mean.
"""
from __future__ import annotations

import contextlib
import os
import warnings

import numpy as np
import torch

from ..errors import ProbeError
from ..selection import Spec
from ..store import FeatureFile, key_name, opened
from . import grid
from .core import make_estimator
from .result import ACROSS, CKAResult, Panel

__all__ = ["cka", "cka_matrix", "CKAResult", "Panel"]


def _estimator_args(kernel, sigma, unbiased, minibatch, device, dtype):
    # the minibatch estimator needs the unbiased HSIC; the full batch defaults to the
    # biased one of Kornblith et al. 2019
    unbiased = minibatch is not None if unbiased is None else unbiased
    return make_estimator(kernel, sigma, unbiased, device, dtype)


def _check_minibatch(minibatch):
    if minibatch is not None and (not isinstance(minibatch, int) or isinstance(minibatch, bool)
                                  or minibatch < 1):
        raise ProbeError(f"minibatch must be a positive number of samples, got {minibatch!r}")


def _select(fa, fb, sel_a, sel_b):
    """The row keys of ``fa`` and the column keys (of ``fb``, or of ``fa`` itself)."""
    rows = fa.select(*sel_a)
    own_b = any(v is not None for v in sel_b)
    if fb is None:
        # a selection for B within one file gives a rectangular grid, e.g. t=10 against t=300
        return rows, (fa.select(*sel_b) if own_b else rows)
    if own_b:
        return rows, fb.select(*sel_b)
    try:
        return rows, fb.select(*sel_a)
    except ProbeError as e:
        raise ProbeError(f"{e} (the second file's keys default to the first's: give its own "
                         "with --t-b, --blocks-b or --keys-b)") from None


def cka(a: str | os.PathLike | FeatureFile, b: str | os.PathLike | FeatureFile | None = None,
        *, t: Spec = None, blocks: Spec = None, keys: Spec = None, t_b: Spec = None,
        blocks_b: Spec = None, keys_b: Spec = None, across: str | None = None,
        minibatch: int | None = None, kernel: str = "linear", sigma: float = 1.0,
        unbiased: bool | None = None, shuffle: bool = True, seed: int = 0,
        device: str = "cpu", dtype: str | None = None, progress: bool = False) -> CKAResult:
    """CKA between (t, block) keys of feature file ``a`` (rows) and of ``b`` (columns; ``a``
    itself when ``b`` is None).

    ``t``/``blocks``/``keys`` select the rows with the grammar of :mod:`probe.selection`
    (``keys`` also takes 'tT' for all blocks at T and 'BLOCK' for a block at all t); default
    all.  ``t_b``/``blocks_b``/``keys_b`` select the columns the same way; they default to
    the rows' selection.  With one file, they pick other columns of the same file (a
    rectangular grid).
    ``across``: 'blocks' (a panel per t), 'timesteps' (a panel per block) or 'all'.
    ``minibatch``: None for the full-batch estimator, else the batch size of the minibatch
    estimator.  ``unbiased``: HSIC estimator (default: biased for full batch, unbiased for
    minibatch).  ``kernel``: 'linear' or 'rbf' (bandwidth ``sigma`` x median distance).
    ``shuffle``/``seed``: minibatches are random samples of the file (files are usually
    sorted by class).  ``dtype``: of the feature product X X^T ('float32' default or
    'float64'); everything after it is float64.  Returns a :class:`CKAResult`.
    """
    _check_minibatch(minibatch)
    est = _estimator_args(kernel, sigma, unbiased, minibatch, device, dtype)
    with contextlib.ExitStack() as files:
        fa = files.enter_context(opened(a))
        fb = None if b is None else files.enter_context(opened(b))
        rows, cols = _select(fa, fb, (t, blocks, keys), (t_b, blocks_b, keys_b))
        rows_b = grid.align_ids(fa, fb) if fb is not None else None
        # the layout is checked before the work, so a bad --across fails at once
        result = CKAResult(np.zeros((len(rows), len(cols))), rows, cols, across or "blocks",
                           (fa.path, fb.path if fb is not None else None), len(fa))
        result.across = _layout(result, across)
        src_b: grid.FileSource | None
        if fb is not None:
            src_b = grid.FileSource(fb, cols)
        else:
            src_b = None if cols == rows else grid.FileSource(fa, cols)
        matrix, dead_a, dead_b, sizes = grid.run(
            grid.FileSource(fa, rows), src_b, est, minibatch, shuffle, seed, rows_b, progress)
    result.matrix = matrix
    result.constant_keys = list(dict.fromkeys(
        [key_name(*k) for k, d in zip(rows, dead_a) if d] + [key_name(*k) for k, d in zip(cols, dead_b) if d]))
    if result.constant_keys:
        warnings.warn(f"CKA: features of {', '.join(result.constant_keys)} do not vary over the "
                      "samples; their CKA is set to 0", stacklevel=2)
    result.estimator = {"kernel": est.kernel, "sigma": est.sigma if est.kernel == "rbf" else None,
                        "unbiased": est.unbiased, "minibatch": minibatch, "batches": len(sizes),
                        "shuffle": bool(shuffle) if len(sizes) > 1 else False, "seed": seed,
                        "dtype": str(est.dtype).replace("torch.", "")}
    return result


def _layout(result, across):
    """``across`` checked against the keys; by default the first layout with something to
    draw: blocks (timesteps first when one block is selected), then all."""
    if across is not None:
        result.panels(across)
        return across
    single_block = len({b for _, b in result.rows}) == 1
    for choice in (["timesteps", "blocks"] if single_block else ["blocks", "timesteps"]):
        try:
            result.panels(choice)
            return choice
        except ProbeError:
            pass
    return "all"


def _as_list(v):
    return [v] if torch.is_tensor(v) or hasattr(v, "shape") else list(v)


def cka_matrix(xs, ys=None, minibatch=None, kernel="linear", sigma=1.0, unbiased=None,
               shuffle=True, seed=0, device="cpu", dtype=None):
    """CKA between in-memory representations: ``xs`` and ``ys`` are lists of arrays or
    tensors (N, ...) over the same N samples in the same order (a single array counts as a
    list of one).  Returns the (len(xs), len(ys)) numpy matrix; pairs with a constant
    representation are 0."""
    _check_minibatch(minibatch)
    est = _estimator_args(kernel, sigma, unbiased, minibatch, device, dtype)
    src_a = grid.ArraySource(_as_list(xs))
    src_b = None if ys is None else grid.ArraySource(_as_list(ys))
    if src_b is not None and len(src_b) != len(src_a):
        raise ProbeError(f"xs has {len(src_a)} samples and ys {len(src_b)}: CKA needs the same samples")
    return grid.run(src_a, src_b, est, minibatch, shuffle, seed)[0]
