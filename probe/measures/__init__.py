"""CKA and other similarity measures between blocks and timesteps, within one feature file
or between two.

- :func:`cka` -- the grid over (t, block) keys of feature files (what `probe cka` runs).
- :func:`cka_matrix` -- the same estimators on in-memory arrays or tensors.
- :func:`similarity` -- any of the measures in ``METRICS`` over the same grid, with a
  permutation null and a bootstrap interval when asked for (what `probe similarity` runs).

See docs/cka.md for the estimators and what the options mean.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any

import numpy as np
import torch

from ..errors import ProbeError
from ..options import RunOptions, Selection, gather, refuse_unknown, selections
from ..store import FeatureFile, key_name, opened
from . import grid, pairs
from .core import make_estimator
from .reading import dims
from .result import ACROSS, DISTANCES, LABELS, METRICS, STATS, CKAResult, Panel, SimilarityResult, interval_method

__all__ = ["cka", "cka_matrix", "similarity", "METRICS", "CKAResult", "SimilarityResult", "Panel"]


def _estimator_args(kernel, sigma, unbiased, minibatch, device, dtype):
    # the minibatch estimator needs the unbiased HSIC; the full batch defaults to the
    # biased one of Kornblith et al. 2019
    unbiased = minibatch is not None if unbiased is None else unbiased
    return make_estimator(kernel, sigma, unbiased, device, dtype)


def _check_minibatch(minibatch):
    if minibatch is not None and (not isinstance(minibatch, int) or isinstance(minibatch, bool)
                                  or minibatch < 1):
        raise ProbeError(f"minibatch must be a positive number of samples, got {minibatch!r}")


@contextlib.contextmanager
def _inputs(a, b, sel_a, sel_b, across=None):
    """The open files, their row and column keys, and the row of B for each row of A
    (None when they list the same ids in the same order, or B is A)."""
    with contextlib.ExitStack() as files:
        fa = files.enter_context(opened(a))
        fb = None if b is None else files.enter_context(opened(b))
        if across == "logsnr" and fb is not None and all(v is None for v in sel_b):
            rows = fa.select(*sel_a)
            cols = _nearest_log_snr_keys(fa, fb, rows)
        else:
            rows, cols = _select(fa, fb, sel_a, sel_b)
        yield fa, fb, rows, cols, (grid.align_ids(fa, fb) if fb is not None else None)


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


def _nearest_log_snr_keys(fa: FeatureFile, fb: FeatureFile, rows: list) -> list:
    """Every key of ``fb`` at the t whose log-SNR is nearest a row's (files of different
    families name the same noise by different t)."""
    levels_a, levels_b = fa.noise_levels(), fb.noise_levels()
    for f, levels in ((fa, levels_a), (fb, levels_b)):
        if not levels:
            raise ProbeError(f"{f.path} records no log-SNR per t (written by an older probe, or a "
                             "network without timesteps): re-extract it, or give --t-b")
    chosen = {min(levels_b, key=lambda tb: abs(levels_b[tb]["logsnr"] - levels_a[t]["logsnr"]))
              for t, _ in rows}
    return [k for k in fb.keys if k[0] in chosen]


def _levels(f: FeatureFile) -> dict:
    return {t: v["logsnr"] for t, v in f.noise_levels().items()}


def _common(rows: Selection | None, cols: Selection | None, run: RunOptions | None,
            options: dict[str, Any]) -> tuple[Selection, Selection, RunOptions]:
    """The key selections and run options of :func:`cka` and :func:`similarity`, from the
    objects or the keywords (``t``, ``blocks``, ``keys``, their ``_b`` forms, ``device``,
    ``progress``...); the device defaults to the CPU."""
    rows, cols = selections(rows, cols, options)
    run = gather(RunOptions, run, options).with_defaults(device="cpu")
    refuse_unknown(options, Selection, RunOptions, also=("t_b", "blocks_b", "keys_b"))
    run.use_threads()
    return rows, cols, run


def cka(a: str | os.PathLike | FeatureFile, b: str | os.PathLike | FeatureFile | None = None,
        *, rows: Selection | None = None, cols: Selection | None = None,
        across: str | None = None, minibatch: int | None = None, kernel: str = "linear",
        sigma: float = 1.0, unbiased: bool | None = None, shuffle: bool = True, seed: int = 0,
        dtype: str | None = None, run: RunOptions | None = None, **options: Any) -> CKAResult:
    """CKA between (t, block) keys of feature file ``a`` (rows) and of ``b`` (columns; ``a``
    itself when ``b`` is None).

    ``rows`` (a :class:`~probe.options.Selection`, or the keywords ``t``/``blocks``/``keys``)
    selects the rows with the grammar of :mod:`probe.selection` (``keys`` also takes 'tT'
    for all blocks at T and 'BLOCK' for a block at all t); default all.  ``cols`` (or
    ``t_b``/``blocks_b``/``keys_b``) selects the columns the same way; they default to the
    rows' selection.  With one file, they pick other columns of the same file (a
    rectangular grid).  ``run`` (:class:`~probe.options.RunOptions`, or its fields as
    keywords): ``device`` (default cpu), ``threads``, ``progress``.
    ``across``: 'blocks' (a panel per t), 'timesteps' (a panel per block), 'logsnr' (a
    panel per pair of blocks, keys on the log-SNR axis; with two files and no selection for
    ``b``, its keys at the t nearest each row's log-SNR) or 'all'.
    ``minibatch``: None for the full-batch estimator, else the batch size of the minibatch
    estimator.  ``unbiased``: HSIC estimator (default: biased for full batch, unbiased for
    minibatch).  ``kernel``: 'linear' or 'rbf' (bandwidth ``sigma`` x median distance).
    ``shuffle``/``seed``: minibatches are random samples of the file (files are usually
    sorted by class).  ``dtype``: of the feature product X X^T ('float32' default or
    'float64'); everything after it is float64.  Returns a :class:`CKAResult`.
    """
    sel_a, sel_b, run = _common(rows, cols, run, options)
    _check_minibatch(minibatch)
    est = _estimator_args(kernel, sigma, unbiased, minibatch, run.device, dtype)
    with _inputs(a, b, sel_a.as_tuple(), sel_b.as_tuple(), across) as (
            fa, fb, row_keys, col_keys, rows_b):
        # the layout is checked before the work, so a bad --across fails at once
        result = CKAResult(np.zeros((len(row_keys), len(col_keys))), row_keys, col_keys,
                           across or "blocks", (fa.path, fb.path if fb is not None else None),
                           len(fa), levels=(_levels(fa), _levels(fb or fa)))
        result.across = _layout(result, across)
        src_b: grid.FileSource | None
        if fb is not None:
            src_b = grid.FileSource(fb, col_keys)
        else:
            src_b = None if col_keys == row_keys else grid.FileSource(fa, col_keys)
        matrix, dead_a, dead_b, sizes = grid.run(
            grid.FileSource(fa, row_keys), src_b, est, minibatch, shuffle, seed, rows_b,
            run.progress)
    result.matrix = matrix
    result.constant_keys = list(dict.fromkeys(
        [key_name(*k) for k, d in zip(row_keys, dead_a) if d]
        + [key_name(*k) for k, d in zip(col_keys, dead_b) if d]))
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


def similarity(a: str | os.PathLike | FeatureFile, b: str | os.PathLike | FeatureFile | None = None,
               *, metric: str = "cka", rows: Selection | None = None,
               cols: Selection | None = None, across: str | None = None, k: int = 10,
               sigma: float = 1.0, rsa_corr: str = "spearman", rdm: str = "correlation",
               permutations: int = 0, bootstrap: int = 0, ci: float = 0.95, seed: int = 0,
               subsample: int | None = None, max_samples: int = pairs.MAX_SAMPLES,
               run: RunOptions | None = None, **options: Any) -> CKAResult:
    """``metric`` between (t, block) keys of feature file ``a`` (rows) and of ``b``
    (columns; ``a`` itself when ``b`` is None), samples paired by id as in :func:`cka`,
    whose key selection (``rows`` and ``cols``, or ``t``, ``blocks``, ``keys`` and their
    ``_b`` forms), ``across`` and ``run`` (``device``, default cpu; ``progress``) this
    takes.

    ``metric``: 'cka', 'cka-unbiased', 'cka-rbf' (the full-batch estimators of :func:`cka`,
    ``sigma`` for the RBF), 'mutual-knn', 'cknna' (``k`` neighbours), 'rsa' (``rdm``:
    'correlation' or 'euclidean' dissimilarities, compared with ``rsa_corr``: 'spearman'
    or 'pearson'), 'procrustes' (a distance) or 'svcca'; see docs/cka.md.
    ``permutations``: P shuffles of the column side's samples give each value a null
    (``null_mean``, ``p_value``); ``bootstrap``: B resamples give a ``ci`` percentile
    interval (``ci_low``, ``ci_high``).  ``subsample``: use N samples drawn at random;
    measures of n x n matrices refuse more than ``max_samples`` samples without it.
    Everything random is drawn from ``seed``.  Returns a :class:`SimilarityResult`
    (``CKAResult``) with ``metric`` set.
    """
    sel_a, sel_b, run = _common(rows, cols, run, options)
    opts = pairs.options(metric, k, sigma, rsa_corr, rdm, run.device, bootstrap)
    pairs.check_draws(permutations, bootstrap, ci)
    with _inputs(a, b, sel_a.as_tuple(), sel_b.as_tuple(), across) as (
            fa, fb, row_keys, col_keys, pair_rows):
        result = SimilarityResult(np.zeros((len(row_keys), len(col_keys))), row_keys, col_keys,
                                  across or "blocks",
                                  (fa.path, fb.path if fb is not None else None), len(fa),
                                  metric=metric, levels=(_levels(fa), _levels(fb or fa)))
        result.across = _layout(result, across)
        src_a, src_b = grid.FileSource(fa, row_keys), grid.FileSource(fb or fa, col_keys)
        sizes = [dims(s, i) for s in (src_a, src_b) for i in range(len(s.keys))]
        picked = pairs.pick_samples(len(fa), sizes, opts, subsample, max_samples, seed)
        if pair_rows is None:
            rows_b = picked
        else:
            rows_b = pair_rows if picked is None else pair_rows[picked]
        out = pairs.run(src_a, src_b, picked, rows_b, opts, permutations, bootstrap, ci, seed,
                        run.progress)
        ids = None if picked is None else [fa.ids[i] for i in picked]
    result.matrix = out["value"]
    for name in STATS:
        setattr(result, name, out.get(name))
    result.num_samples = len(fa) if picked is None else len(picked)
    result.estimator = _settings(opts, result.num_samples, len(fa), sizes, seed, ids)
    result.uncertainty = _uncertainty(opts, permutations, bootstrap, ci, seed)
    flat = [key_name(*x) for src in (src_a, src_b) for x in src.keys if (src.name, x) in out["constant"]]
    result.constant_keys = list(dict.fromkeys(flat))
    if result.constant_keys:
        set_to = "Procrustes distance is set to 2" if metric == "procrustes" else "value is set to 0"
        warnings.warn(f"{LABELS[metric]}: features of {', '.join(result.constant_keys)} do not "
                      f"vary over the samples; their {set_to}", stacklevel=2)
    return result


def _settings(opts, n, of, sizes, seed, ids):
    """What the JSON records of how the measure was computed."""
    m = opts.metric
    out = {"metric": m}
    if m.startswith("cka"):
        out.update(kernel="rbf" if m == "cka-rbf" else "linear", unbiased=m == "cka-unbiased",
                   sigma=opts.sigma if m == "cka-rbf" else None, minibatch=None, batches=1)
    out.update({"mutual-knn": {"k": opts.k, "neighbours": "cosine similarity"},
                "cknna": {"k": opts.k, "neighbours": "cosine similarity"},
                "rsa": {"rdm": opts.rdm, "rsa_corr": opts.rsa_corr},
                "svcca": {"variance_kept": 0.99}}.get(m, {}))
    out["num_samples"] = n
    out["subsample"] = None if ids is None else {"size": n, "of": of, "seed": seed, "ids": ids}
    if pairs.needs_square(opts, n, sizes):
        out["memory"] = (f"{n} x {n} float64 matrices of {_size(pairs.square_bytes(n))} each, "
                         "about two per key")
    return out


def _size(b):
    return next(f"{b / 2**e:.3g} {unit}" for e, unit in ((30, "GiB"), (20, "MiB"), (10, "KiB"), (0, "B"))
                if b >= 2**e or e == 0)


def _uncertainty(opts, permutations, bootstrap, ci, seed):
    out = {"seed": seed}
    if permutations:
        sign = "<=" if opts.metric in DISTANCES else ">="
        out.update(permutations=permutations, null="the column side's samples shuffled",
                   p_value=f"(1 + #(null {sign} value)) / (1 + permutations)")
    if bootstrap:
        out.update(bootstrap=bootstrap, ci=ci,
                   interval=f"{interval_method(opts.metric)}, samples resampled with replacement")
    return out


def _as_list(v):
    return [v] if torch.is_tensor(v) or hasattr(v, "shape") else list(v)


def cka_matrix(xs: Any, ys: Any = None, minibatch: int | None = None, kernel: str = "linear",
               sigma: float = 1.0, unbiased: bool | None = None, shuffle: bool = True,
               seed: int = 0, device: Any = "cpu", dtype: Any = None) -> np.ndarray:
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
