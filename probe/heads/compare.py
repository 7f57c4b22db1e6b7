"""`probe compare`: a grid of heads over (t, block) keys.  Each neural head trains on
every key in one pass over the data (sharing every batch); baselines fit per key; the
fusion head is one head on all the keys.  The rows are drawn (CSV, markdown table,
figures) by :mod:`probe.report.heads`."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from ..errors import ProbeError
from ..selection import Spec
from ..store import FeatureFile, opened
from .build import ALL_HEADS, check_head
from .fit import split_options, train_heads
from .fusion import fusion_views
from .setup import Setup

COLUMNS = ["t", "block", "head", "params", "top1", "top1_low", "top1_high", "num_eval", "top5",
           "val_top1", "selected_epoch", "epochs_run", "train_time_s", "keys_in_pass", "input",
           "keys"]


def _row(summary: dict[str, Any]) -> dict[str, Any]:
    """A CSV row; a fusion row has no t and block, its keys instead."""
    row = {c: summary.get(c) for c in COLUMNS}
    row["top1_low"], row["top1_high"] = summary["top1_interval"]
    row["keys"] = " + ".join(summary["keys"]) if summary.get("keys") else None
    return row


def parse_heads(heads: str | Iterable[str]) -> list[str]:
    if isinstance(heads, str):
        heads = ALL_HEADS[:4] if heads == "all" else heads.split(",")
    heads = [check_head(h.strip()) for h in heads if h.strip()]
    if not heads:
        raise ProbeError("no heads given: e.g. --heads linear,mlp,cnn,attention")
    return list(dict.fromkeys(heads))


@dataclass(frozen=True)
class Comparison:
    """What :func:`compare_heads` found: one row (dict with the :data:`COLUMNS`) per (key,
    head), the full summary of each, and where it trained and was evaluated (``train``,
    ``test`` paths, ``num_train``, ``num_val``, ``notes``)."""

    rows: list[dict[str, Any]]
    summaries: list[dict[str, Any]]
    context: dict[str, Any]


def compare(train: str | os.PathLike | FeatureFile,
            test: str | os.PathLike | FeatureFile | None = None, *,
            heads: str | Sequence[str] = ("linear", "mlp", "cnn", "attention"), t: Spec = "all",
            blocks: Spec = "all", keys: Spec = None, out: str | os.PathLike | None = None,
            comparable_size: bool = False, progress: bool = True,
            **options: Any) -> list[dict[str, Any]]:
    """Train and evaluate every head on every (t, block) of ``train`` selected by ``t`` x
    ``blocks`` or by ``keys`` (the grammar of :mod:`probe.selection`).

    Returns one row (dict with the :data:`COLUMNS`) per (key, head); with ``out`` (a
    directory) the report layer also writes results.csv, results.md, results.json,
    accuracy_vs_t.png and heads.png there (:func:`probe.report.heads.write_compare`).
    Options as for :func:`probe.fit`.
    """
    found = compare_heads(train, test, heads=heads, t=t, blocks=blocks, keys=keys,
                          comparable_size=comparable_size, progress=progress, **options)
    if out is not None:
        from ..report.heads import write_compare  # the API's caller of the report layer

        write_compare(out, found.rows, COLUMNS, found.summaries, found.context)
    return found.rows


def compare_heads(train: str | os.PathLike | FeatureFile,
                  test: str | os.PathLike | FeatureFile | None = None, *,
                  heads: str | Sequence[str] = ("linear", "mlp", "cnn", "attention"),
                  t: Spec = "all", blocks: Spec = "all", keys: Spec = None,
                  comparable_size: bool = False, progress: bool = True,
                  **options: Any) -> Comparison:
    """The work of :func:`compare`, drawing nothing: its rows, summaries and context."""
    heads = parse_heads(heads)
    if heads == ["fusion"]:
        raise ProbeError("compare the fusion head with single-key heads, e.g. --heads "
                         "linear,attention,fusion (for the fusion head alone: probe fit --head "
                         "fusion)")
    head_opts, cfg = split_options(options)
    with opened(train) as tr:
        chosen = tr.select(t, blocks, keys)
        with Setup(tr, test, chosen, cfg) as setup:
            for h in heads:  # fail on a head/feature mismatch before any training
                if h == "fusion":
                    fusion_views(setup, chosen, head_opts)
                for k in chosen if h != "fusion" else ():
                    setup.view(k, h)
            results = []
            for h in heads:
                results += train_heads(setup, h, chosen, head_opts, comparable_size, progress)
            context = dict(train=setup.train.path, num_train=len(setup.train_rows),
                           test=None if setup.test is None else setup.test.path,
                           num_val=len(setup.val_rows), notes=list(setup.notes))
    return Comparison([_row(r.summary) for r in results], [r.summary for r in results], context)
