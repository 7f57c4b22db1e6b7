"""`probe.fit(..., task="segmentation")`: a segmentation head on one or several keys' maps,
scored by mIoU on the test file (or a validation split of train)."""
from __future__ import annotations

import contextlib
import os
from typing import Any

import numpy as np
import torch

from ...device import resolve_device
from ...errors import ProbeError, suggest
from ...selection import Spec, key_label
from ...store import check_compatible, key_name, opened
from ...version import __version__
from ..setup import COMPATIBLE, split_rows
from .metrics import segmentation_metrics
from .modules import SEG_HEADS
from .result import SegResult
from .train import SegConfig, evaluate, masks_on, source, train_seg_head

DEFAULT_HEAD = "seg-linear"
SEG_OPTIONS = {"hidden", "members", "dim"}
EXAMPLES = 6  # images drawn with their true and predicted masks


def check_seg_head(head: str) -> str:
    if head not in SEG_HEADS:
        raise ProbeError(f"unknown segmentation head {head!r}{suggest(head, list(SEG_HEADS))}; "
                         f"choose from {', '.join(SEG_HEADS)}")
    return head


def seg_config(options: dict) -> tuple[dict, SegConfig]:
    """Keyword options -> (head options, SegConfig); unknown names are an error."""
    fields = set(SegConfig.__dataclass_fields__)
    unknown = set(options) - fields - SEG_OPTIONS
    if unknown:
        name = sorted(unknown)[0]
        raise ProbeError(f"option {name!r} does not apply to segmentation heads"
                         f"{suggest(name, fields | SEG_OPTIONS)}")
    cfg = {k: v for k, v in options.items() if k in fields and v is not None}
    cfg["device"] = str(resolve_device(cfg.get("device")))
    c = SegConfig(**cfg)
    for name, low in (("epochs", 1), ("batch_size", 2), ("patience", 0), ("bootstrap", 0)):
        if int(getattr(c, name)) < low:
            raise ProbeError(f"--{name.replace('_', '-')} must be at least {low}")
    if not 0 <= c.val_fraction < 1:
        raise ProbeError("--val-fraction must be in [0, 1)")
    return {k: v for k, v in options.items() if k in SEG_OPTIONS}, c


def _check_file(ff, keys, head):
    if not ff.has_masks:
        raise ProbeError(f"{ff.path} has no masks: a {head} head needs a dataset with label "
                         "maps (extract fashion-mnist-seg, demo-seg, voc2012:ROOT, ade20k:ROOT "
                         "or segfolder:ROOT)")
    for k in keys:
        if len(ff.shape(k)) != 3:
            raise ProbeError(f"the {head} head needs a spatial map but {key_label(k)} in "
                             f"{ff.path} is pooled to {ff.shape(k)} (--pool "
                             f"{ff.attrs.get('pool', 'mean')}): re-extract with --pool none")


def _check_test(tr, te, keys):
    check_compatible(tr, te, what=COMPATIBLE)
    if tr.mask_class_names != te.mask_class_names or tr.ignore_index != te.ignore_index:
        raise ProbeError(f"{tr.path} and {te.path} have different mask classes or ignore "
                         "values: extract both from the same dataset")
    if tr.masks.shape[1:] != te.masks.shape[1:]:
        raise ProbeError(f"masks are {tr.masks.shape[1:]} in {tr.path} but "
                         f"{te.masks.shape[1:]} in {te.path}: extract both the same way")
    for k in keys:
        if tr.shape(k) != te.shape(k):
            raise ProbeError(f"{key_label(k)} has shape {tr.shape(k)} in {tr.path} but "
                             f"{te.shape(k)} in {te.path}: extract both the same way")


def _check_masks(ff, masks, num_classes, ignore):
    bad = (masks >= num_classes) & (masks != ignore)
    if bool(bad.any()):
        raise ProbeError(f"{ff.path}: masks hold class {int(masks[bad].max())} but only "
                         f"{num_classes} classes are named: the file is inconsistent")


def fit_segmentation(train: Any, *, t: Spec = None, blocks: Spec = None, keys: Spec = None,
                     head: str = DEFAULT_HEAD, test: Any = None, out: str | os.PathLike | None = None,
                     progress: bool = True, **options: Any) -> SegResult:
    """Train segmentation head ``head`` (seg-linear, seg-mlp, seg-ensemble) on the maps of
    the keys selected (several: concatenated after a bilinear resize to a common grid)
    and score it by mIoU on ``test`` (or the validation split carved from ``train``).

    ``options``: head options (``hidden``, ``members``) and :class:`SegConfig` fields
    (epochs, batch_size, lr, weight_decay, patience, val_fraction, seed, device,
    memory_limit_gb, stream, bootstrap).  ``out``: save the JSON there (and the figure
    of a few images next to it).
    """
    check_seg_head(head)
    head_opts, cfg = seg_config(options)
    with contextlib.ExitStack() as stack:
        tr = stack.enter_context(opened(train))
        te = None if test is None else stack.enter_context(opened(test))
        # what is named is read (several keys: concatenated); nothing named: the one key
        named = any(x is not None for x in (t, blocks, keys))
        chosen = tr.select(t, blocks, keys) if named else [tr.catalog.one()]
        if not chosen:
            raise ProbeError(f"no keys of {tr.path} match this selection")
        _check_file(tr, chosen, head)
        if te is not None:
            _check_file(te, chosen, head)
            _check_test(tr, te, chosen)
        result = _run(tr, te, chosen, head, head_opts, cfg, progress)
    if out is not None:
        result.save(out)
    return result


def _run(tr, te, keys, head, head_opts, cfg, progress):
    device = torch.device(cfg.device)
    names, ignore = tr.mask_class_names, tr.ignore_index
    k = len(names)
    labels = np.asarray(tr.labels, np.int64)
    train_rows, val_rows = split_rows(labels, cfg.val_fraction, cfg.seed)
    if te is None and not len(val_rows):
        raise ProbeError("nothing to evaluate on: pass a test file (--test) or a "
                         "--val-fraction above 0")
    src = source(tr, keys, cfg)
    masks = masks_on(tr, device)
    _check_masks(tr, masks, k, ignore)
    shapes = [tr.shape(key) for key in keys]
    module, opts, log = train_seg_head(head, shapes, keys, src, masks, train_rows, val_rows, k,
                                       ignore, cfg, head_opts, progress)
    if te is None:
        eval_src, eval_masks, eval_rows, eval_ff = src, masks, val_rows, tr
    else:
        eval_src, eval_masks = source(te, keys, cfg), masks_on(te, device)
        _check_masks(te, eval_masks, k, ignore)
        eval_rows, eval_ff = np.arange(len(te)), te
    stats, preds = evaluate(module, eval_src, eval_masks, eval_rows, keys, k, ignore,
                            cfg.batch_size, device, keep=EXAMPLES)
    summary = {
        "task": "segmentation", "head": head,
        "t": keys[0][0] if len(keys) == 1 else None,
        "block": keys[0][1] if len(keys) == 1 else None,
        "keys": [key_name(*key) for key in keys],
        "input": "; ".join(f"{key_name(*key)}: map {s}" for key, s in zip(keys, shapes)),
        "mask_size": int(masks.shape[-1]), "ignore_index": int(ignore),
        "params": int(sum(p.numel() for p in module.parameters())),
        "head_options": {a: list(v) if isinstance(v, tuple) else v for a, v in opts.items()},
        "evaluated_on": "test" if te is not None else "validation",
        "train_file": tr.path, "test_file": te.path if te is not None else None,
        "num_train": int(len(train_rows)), "num_val": int(len(val_rows)),
        "num_eval": int(len(stats)), "class_names": list(names),
    }
    summary.update(segmentation_metrics(stats, names, resamples=cfg.bootstrap, seed=cfg.seed))
    if hasattr(module, "weights"):  # seg-fusion: how much of the mix each key is
        w = module.weights().detach().cpu().numpy()
        summary["key_weights"] = {key_name(*key): float(v) for key, v in zip(keys, w)}
    summary.update(log, settings=cfg.as_dict(), seed=cfg.seed, features=tr.describe(),
                   masks=tr.masks.attrs.get("description"), probe_version=__version__)
    rows = np.sort(eval_rows)[:len(preds)]
    examples = dict(rows=rows, ids=[eval_ff.ids[r] for r in rows], pred=preds,
                    true=eval_ff.masks[rows.tolist()] if len(rows) else preds,
                    file=eval_ff.path)
    return SegResult(summary, stats, module, examples)
