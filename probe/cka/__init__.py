"""CKA between blocks and timesteps, within one feature file or between two.

- :func:`cka` -- the grid over (t, block) keys of feature files (what `probe cka` runs).
- :func:`cka_matrix` -- the same estimators on in-memory arrays or tensors.

See docs/cka.md for the estimators and what the options mean.
"""
import warnings

import numpy as np
import torch

from ..errors import ProbeError
from ..store import FeatureFile, key_name, open_features
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


def _open(f, opened):
    if isinstance(f, FeatureFile):
        return f
    opened.append(open_features(f))
    return opened[-1]


def cka(a, b=None, keys=None, keys_b=None, across=None, minibatch=None, kernel="linear",
        sigma=1.0, unbiased=None, shuffle=True, seed=0, device="cpu", dtype=None,
        progress=False):
    """CKA between (t, block) keys of feature file ``a`` (rows) and of ``b`` (columns; ``a``
    itself when ``b`` is None).

    ``keys``/``keys_b``: which keys ('tT/BLOCK', 'tT' for all blocks at T, 'BLOCK' for a
    block at all t); default all (``keys_b`` defaults to ``keys``, else all of ``b``).
    With one file, ``keys_b`` picks other columns of the same file (a rectangular grid).
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
    opened = []
    try:
        fa = _open(a, opened)
        fb = None if b is None else _open(b, opened)
        rows = grid.select_keys(fa, keys)
        if fb is None:
            # keys_b within one file gives a rectangular grid, e.g. t=10 blocks against t=300
            cols = rows if keys_b is None else grid.select_keys(fa, keys_b)
        elif keys_b is not None:
            cols = grid.select_keys(fb, keys_b)
        else:
            try:
                cols = grid.select_keys(fb, keys)
            except ProbeError as e:
                raise ProbeError(f"{e} (the second file's keys default to --keys: give it its own "
                                 "with --keys-b)") from None
        rows_b = grid.align_ids(fa, fb) if fb is not None else None
        # the layout is checked before the work, so a bad --across fails at once
        result = CKAResult(np.zeros((len(rows), len(cols))), rows, cols, across or "blocks",
                           (fa.path, fb.path if fb is not None else None), len(fa))
        result.across = _layout(result, across)
        if fb is not None:
            src_b = grid.FileSource(fb, cols)
        else:
            src_b = None if cols == rows else grid.FileSource(fa, cols)
        matrix, dead_a, dead_b, sizes = grid.run(
            grid.FileSource(fa, rows), src_b, est, minibatch, shuffle, seed, rows_b, progress)
    finally:
        for f in opened:
            f.close()
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
