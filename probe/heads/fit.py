"""`probe.fit`: train one head on one (t, block) of a feature file and evaluate it.

The same machinery (:class:`~probe.heads.setup.Setup`, :func:`train_heads`) runs the
grids of :mod:`probe.heads.compare`.  The jobs live next door: the files and the split in
:mod:`.setup`, the summary in :mod:`.result`, the stacked linear grid in :mod:`.linear`.
"""
from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import ProbeError, suggest
from ..selection import Key, Spec, key_label
from ..store import FeatureFile, opened
from .baselines import baseline_params, baseline_scores, make_baseline
from .build import BASELINES, build_head, check_head, count_params, head_options
from .data import FeatureSource, view_shape
from .fusion import train_fusion
from .linear import linear_grid_units
from .result import FitResult, make_summary
from .setup import GB, Setup
from .solver import fit_linear
from .train import TrainConfig, head_seed, predict, single_unit, train_pass


@contextlib.contextmanager
def _deterministic(device):
    """cuDNN picks kernels by timing unless told not to; pin them for repeatable runs."""
    if torch.device(device).type != "cuda":
        yield
        return
    old = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old


def _build_units(setup, head, views, options, comparable_size):
    """(units, (options, params) per member, the view index of each member): the units
    that train ``head`` on every view, their members in order."""
    n, seed = setup.num_classes, setup.cfg.seed
    shapes = [view_shape(setup.train.shape(k), kind) for k, kind in views]
    if head == "linear":
        return linear_grid_units(views, [s[0] for s in shapes], n, seed, setup.cfg.device)
    units, infos = [], []
    for view, shape in zip(views, shapes):
        with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's RNG
            torch.manual_seed(head_seed(seed, view[0], head))
            module, opts = build_head(head, shape, n, options, comparable_size)
        units.append(single_unit(module, view))
        infos.append((opts, count_params(module)))
    return units, infos, list(range(len(views)))


def _solve_linear(setup, views, source, cfg, progress, desc):
    """The linear head by full-batch L-BFGS (:mod:`.solver`): (per view a dict like
    train_pass's, (options, params) per view, wall time).  No epochs: ``selected_epoch``
    and ``epochs_run`` are left out (null in the JSON)."""
    dims = [view_shape(setup.train.shape(k), kind)[0] for k, kind in views]
    members, elapsed = fit_linear(source, views, dims, setup.train_rows, setup.val_rows,
                                  setup.num_classes, cfg, progress=progress, desc=desc)
    infos = [({"solver": "lbfgs", "l2": m["l2"]}, d * setup.num_classes + setup.num_classes)
             for m, d in zip(members, dims)]
    return members, infos, elapsed


def train_heads(setup: Setup, head: str, keys: Sequence[Key],
                options: dict[str, Any] | None = None, comparable_size: bool = False,
                progress: bool = True) -> list[FitResult]:
    """Train ``head`` on each of ``keys`` (neural heads: in one pass sharing batches) and
    evaluate; returns one :class:`FitResult` per key (the fusion head: one for all)."""
    check_head(head)
    if head == "fusion":
        with _deterministic(setup.cfg.device):
            return [train_fusion(setup, keys, options, comparable_size, progress)]
    cfg = setup.cfg.for_head(head, len(setup.train_rows))
    views = [setup.view(k, head) for k in keys]
    if head in BASELINES:
        return [_fit_baseline(setup, head, view, options) for view in views]
    limit = cfg.memory_limit_gb * GB
    source = FeatureSource(setup.train, views, limit, cfg.stream)
    desc = f"{head} x{len(keys)}" if len(keys) > 1 else f"{head} {key_label(keys[0])}"
    with _deterministic(cfg.device):
        if head == "linear" and cfg.solver == "lbfgs":
            members, infos, elapsed = _solve_linear(setup, views, source, cfg, progress, desc)
        else:
            units, infos, order = _build_units(setup, head, views, options, comparable_size)
            states, elapsed = train_pass(units, source, setup.train_rows, setup.val_rows, cfg,
                                         progress=progress, desc=desc)
            by_view = dict(zip(order, zip((s for st in states for s in st), infos)))
            members, infos = zip(*(by_view[i] for i in range(len(views))))
        eval_src, rows = setup.eval_source(views)
        scores = predict([(v, s["head"]) for v, s in zip(views, members)], eval_src or source,
                         rows, cfg.batch_size, torch.device(cfg.device))
    results = []
    for view, s, (opts, params), sc in zip(views, members, infos, scores):
        extra = dict(val_top1=s["val_top1"], val_loss=s["val_loss"],
                     selected_epoch=s.get("selected_epoch"), epochs_run=s.get("epochs_run"),
                     train_time_s=round(elapsed, 3),
                     keys_in_pass=len(keys), streamed=source.streamed)
        if "solver" in s:
            extra["solver"] = s["solver"]
        summary = make_summary(setup, head, view, opts, params, comparable_size, sc, extra, cfg)
        results.append(FitResult(summary, sc, s["head"]))
    return results


def _fit_baseline(setup, head, view, options):
    cfg = setup.cfg
    opts = head_options(head, options)
    if head == "knn":
        opts["k"] = int(min(opts["k"], len(setup.train_rows)))
    limit = cfg.memory_limit_gb * GB
    source = FeatureSource(setup.train, [view], float("inf"), stream=False)
    if source.nbytes > limit:
        raise ProbeError(f"the {head} baseline needs the features in memory "
                         f"({source.nbytes / GB:.1f} GB > --memory-limit "
                         f"{cfg.memory_limit_gb} GB): "
                         "raise --memory-limit or use --head linear")
    x = source.arrays[view]
    model = make_baseline(head, opts, cfg.seed)
    start = time.perf_counter()
    model.fit(x[setup.train_rows], np.asarray(setup.train.labels)[setup.train_rows])
    elapsed = time.perf_counter() - start
    if setup.test is None:
        x_eval = x[setup.val_rows]
    else:
        x_eval = FeatureSource(setup.test, [view], float("inf"), stream=False).arrays[view]
    scores = baseline_scores(model, x_eval, setup.num_classes)
    extra = dict(val_top1=None, val_loss=None, selected_epoch=None, epochs_run=None,
                 train_time_s=round(elapsed, 3), keys_in_pass=1, streamed=False)
    summary = make_summary(setup, head, view, opts, baseline_params(model), False, scores, extra, cfg)
    return FitResult(summary, scores, model)


TRAIN_OPTIONS = set(TrainConfig.__dataclass_fields__)
HEAD_OPTIONS = {"hidden", "width", "depth", "dim", "num_heads", "pos_embed", "k", "C",
                "fusion_head"}


def split_options(kwargs: dict[str, Any]) -> tuple[dict[str, Any], TrainConfig]:
    """Keyword arguments -> (head options, TrainConfig); unknown names are an error."""
    unknown = set(kwargs) - TRAIN_OPTIONS - HEAD_OPTIONS
    if unknown:
        name = sorted(unknown)[0]
        raise ProbeError(f"unknown option {name!r}{suggest(name, TRAIN_OPTIONS | HEAD_OPTIONS)}")
    head = {k: v for k, v in kwargs.items() if k in HEAD_OPTIONS}
    cfg = TrainConfig(**{k: v for k, v in kwargs.items() if k in TRAIN_OPTIONS and v is not None})
    return head, cfg


def fit(train: str | os.PathLike | FeatureFile, *, t: Spec = None, blocks: Spec = None,
        keys: Spec = None, head: str = "linear",
        test: str | os.PathLike | FeatureFile | None = None,
        out: str | os.PathLike | None = None, comparable_size: bool = False,
        progress: bool = True, block: Spec = None, task: str | None = None,
        **options: Any) -> FitResult:
    """Train ``head`` on one (t, block) of ``train`` and evaluate it on ``test`` (or on the
    validation split carved from train when no test file is given).  The ``"fusion"``
    head reads every key selected (at least two; all keys of the file by default), mixed
    with learned weights (:mod:`probe.heads.fusion`; ``summary["key_weights"]``).

    ``t``/``blocks``/``keys`` select the key with the grammar of :mod:`probe.selection`
    (blocks by name or 1-based id; ``block`` is an alias of ``blocks``); they may be
    omitted where the file leaves one choice.  ``train``/``test``: paths or open
    :class:`~probe.store.FeatureFile`s.  ``head``: linear, mlp, cnn, attention, fusion,
    logreg or knn.  ``options``: head options (hidden, width, depth, dim, num_heads,
    pos_embed, k, C, fusion_head: linear or attention)
    and training options (see :class:`~probe.heads.train.TrainConfig`: epochs, batch_size,
    optimizer, lr, weight_decay, warmup_epochs, patience, val_fraction, seed, device,
    memory_limit_gb, stream).  ``out``: also save the summary as JSON there.

    ``task="segmentation"`` (or a ``seg-*`` head: seg-linear, the default, seg-mlp,
    seg-ensemble) trains a dense head on the maps of the keys selected and scores it by
    mIoU (:func:`probe.heads.dense.fit.fit_segmentation`, which returns a SegResult).
    """
    if task not in (None, "classification", "segmentation"):
        raise ProbeError(f"unknown task {task!r}: use classification or segmentation")
    if task == "segmentation" or head.startswith("seg-"):
        from .dense.fit import DEFAULT_HEAD, fit_segmentation

        blocks = blocks if block is None else block
        return fit_segmentation(train, t=t, blocks=blocks, keys=keys,  # type: ignore[return-value]
                                head=DEFAULT_HEAD if head == "linear" else head, test=test,
                                out=out, progress=progress, **options)
    check_head(head)
    if block is not None:
        if blocks is not None:
            raise ProbeError("give the block once: blocks= (block= is its old name)")
        blocks = block
    head_opts, cfg = split_options(options)
    with opened(train) as tr:
        # the fusion head reads every key selected (all by default), the others one
        chosen = (tr.select(t, blocks, keys) if head == "fusion"
                  else [tr.catalog.one(t, blocks, keys)])
        with Setup(tr, test, chosen, cfg) as setup:
            result = train_heads(setup, head, chosen, head_opts, comparable_size, progress)[0]
    if out is not None:
        result.save(out)
    return result
