"""The result of a fit: its JSON summary, scores and trained head."""
from ..files import atomic_json
from ..version import __version__
from .build import BASELINES, VEC
from .metrics import classification_metrics


class FitResult:
    """``summary``: the JSON-ready result (also readable as ``result["top1"]``);
    ``scores``: (N, classes) softmax scores on the evaluated samples; ``model``: the
    trained head (a torch module, or a scikit-learn pipeline for baselines)."""

    def __init__(self, summary, scores, model):
        self.summary, self.scores, self.model = summary, scores, model

    def __getitem__(self, k):
        return self.summary[k]

    def __repr__(self):
        s = self.summary
        return (f"FitResult({s['head']} on t{s['t']}/{s['block']}: top-1 {s['top1']:.4f}, "
                f"{s['params']} params)")

    def save(self, path):
        return atomic_json(self.summary, path)


def make_summary(setup, head, view, opts, params, comparable_size, scores, extra, cfg):
    (t, block), kind = view
    notes = list(setup.notes)
    if kind == VEC and setup.train.is_spatial((t, block)):
        notes.append(f"{head} on a spatial map: features global-average-pooled to "
                     f"({setup.train.shape((t, block))[0]},) first")
    out = {
        "head": head, "t": t, "block": block,
        "input": setup.describe_input((t, block), kind),
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
