"""The result of a fit: its JSON summary, scores and trained head."""
from __future__ import annotations

import os
from typing import Any

from ..files import atomic_json
from ..selection import key_label
from ..store import key_name
from ..version import __version__
from .build import BASELINES, VEC
from .metrics import classification_metrics


class FitResult:
    """``summary``: the JSON-ready result (also readable as ``result["top1"]``);
    ``scores``: (N, classes) softmax scores on the evaluated samples; ``model``: the
    trained head (a torch module, or a scikit-learn pipeline for baselines)."""

    def __init__(self, summary: dict[str, Any], scores: Any, model: Any) -> None:
        self.summary, self.scores, self.model = summary, scores, model

    def __getitem__(self, k: str) -> Any:
        return self.summary[k]

    def __repr__(self) -> str:
        s = self.summary
        on = (f"{len(s['keys'])} keys" if s.get("keys") else key_label((s["t"], s["block"])))
        return f"FitResult({s['head']} on {on}: top-1 {s['top1']:.4f}, {s['params']} params)"

    def save(self, path: str | os.PathLike) -> str:
        """Write the JSON to ``path``; a fusion head also draws its key weights next to
        it (:func:`weights_plot_path`)."""
        if self.summary.get("key_weights"):
            from ..report.heads import plot_key_weights  # the API's caller of the report layer

            plot_key_weights(self.summary, weights_plot_path(path))
        return atomic_json(self.summary, path)


def weights_plot_path(json_path: str | os.PathLike) -> str:
    """Where the fusion head's weights are drawn: RESULT.json -> RESULT_weights.png."""
    root, ext = os.path.splitext(os.fspath(json_path))
    return (root if ext.lower() == ".json" else os.fspath(json_path)) + "_weights.png"


def _describe(setup, head, views):
    """(t, block, input, notes): for several views (the fusion head), t and block are
    None and the input lists every key."""
    notes = []
    pooled = [k for k, kind in views if kind == VEC and setup.train.is_spatial(k)]
    if len(views) == 1:
        (t, block), kind = views[0]
        if pooled:
            notes.append(f"{head} on a spatial map: features global-average-pooled to "
                         f"({setup.train.shape((t, block))[0]},) first")
        return t, block, setup.describe_input((t, block), kind), notes
    if pooled:
        notes.append(f"{head} on spatial maps: each key's features global-average-pooled first")
    inputs = [setup.describe_input(k, kind) for k, kind in views]
    described = (f"{len(views)} keys, each {inputs[0]}" if len(set(inputs)) == 1 else
                 "; ".join(f"{key_name(*k)}: {d}" for (k, _), d in zip(views, inputs)))
    return None, None, described, notes


def make_summary(setup: Any, head: str, view: Any, opts: dict[str, Any], params: int,
                 comparable_size: bool, scores: Any, extra: dict[str, Any],
                 cfg: Any) -> dict[str, Any]:
    """The JSON summary of a head on ``view`` (one (key, kind) pair, or a list of them for
    the fusion head, which also records ``keys``)."""
    views = view if isinstance(view, list) else [view]
    t, block, described, notes = _describe(setup, head, views)
    notes = list(setup.notes) + notes
    out = {
        "head": head, "t": t, "block": block,
        **({"keys": [key_name(*k) for k, _ in views]} if isinstance(view, list) else {}),
        "input": described,
        "params": int(params),
        "head_options": {k: list(v) if isinstance(v, tuple) else v for k, v in opts.items()},
        "comparable_size": bool(comparable_size),
        "evaluated_on": "test" if setup.test is not None else "validation",
        "train_file": setup.train.path,
        "test_file": setup.test.path if setup.test is not None else None,
        "num_train": int(len(setup.train_rows)), "num_val": int(len(setup.val_rows)),
        "num_eval": int(len(scores)),
        "class_names": list(setup.class_names),
    }
    out.update(classification_metrics(setup.eval_labels(), scores, setup.class_names))
    out.update(extra)
    settings = cfg.as_dict()
    if head in BASELINES:  # they do not use the optimiser settings
        settings = {k: settings[k] for k in ("val_fraction", "seed", "memory_limit_gb")}
    out.update(settings=settings, seed=cfg.seed,
               features=setup.train.describe(), probe_version=__version__, notes=notes)
    return out
