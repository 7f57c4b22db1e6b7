"""`probe.fit`: train one head on one (t, block) of a feature file and evaluate it.

The same machinery (:class:`Setup`, :func:`train_heads`) runs the grids of
:mod:`probe.heads.compare`.
"""
import contextlib
import json
import os
import time

import numpy as np
import torch

from ..errors import ProbeError, suggest
from ..store import FeatureFile, check_compatible, open_features, parse_key
from .baselines import baseline_params, baseline_scores, make_baseline
from .build import (BASELINES, MAP, VEC, build_head, check_head, count_params, head_options,
                    head_view)
from .data import FeatureSource, view_shape
from .linear import LinearGrid
from .metrics import classification_metrics
from .train import TrainConfig, Unit, head_seed, predict, single_unit, train_pass

# what must match between a train and a test file (the key itself is checked separately)
COMPATIBLE = ("model", "checkpoint_sha256", "weights_sha256", "pool", "add_noise", "ensemble")
GB = 1 << 30


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
        save_json(self.summary, path)
        return path


def save_json(obj, path):
    path = str(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def _open(f):
    return f if isinstance(f, FeatureFile) else open_features(f)


@contextlib.contextmanager
def opened(f):
    """An open FeatureFile for a path (closed after) or an open file (left open)."""
    ff = _open(f)
    try:
        yield ff
    finally:
        if ff is not f:
            ff.close()


def split_rows(labels, val_fraction, seed):
    """(train rows, validation rows), sorted; stratified by class when every class can
    give a sample to each side.  Reproduce with sklearn's train_test_split(arange(N),
    test_size=val_fraction, random_state=seed, stratify=labels)."""
    from sklearn.model_selection import train_test_split

    n = len(labels)
    rows = np.arange(n)
    if val_fraction <= 0 or round(n * val_fraction) < 1:
        return rows, rows[:0]
    counts = np.bincount(labels)
    counts = counts[counts > 0]
    stratify = labels if counts.min() >= 2 and round(n * val_fraction) >= len(counts) else None
    tr, va = train_test_split(rows, test_size=val_fraction, random_state=seed, stratify=stratify)
    return np.sort(tr), np.sort(va)


def resolve_key(ff, t=None, block=None):
    """The (t, block) to use: both given, or the only one that fits what is given."""
    if t is not None and block is not None:
        return ff._check((int(t), str(block)))
    cands = [k for k in ff.keys
             if (t is None or k[0] == int(t)) and (block is None or k[1] == block)]
    if len(cands) == 1:
        return cands[0]
    if not cands:
        if block is not None and block not in ff.blocks:
            raise ProbeError(f"{ff.path} has no block {block!r}{suggest(block, ff.blocks)}; it has "
                             f"{', '.join(ff.blocks)}")
        raise ProbeError(f"{ff.path} has no features at t={t}; it has t in {ff.timesteps}")
    raise ProbeError(f"{ff.path} has {len(cands)} (t, block) keys: choose one with --t and --block "
                     f"(t in {sorted({k[0] for k in cands})}, blocks "
                     f"{', '.join(dict.fromkeys(k[1] for k in cands))})")


def resolve_grid(ff, t="all", blocks="all"):
    """The keys of a grid: timesteps and blocks as 'all', a comma string or a list."""
    def items(v):
        if v is None or v == "all":
            return None
        if isinstance(v, (str, int)):
            v = str(v).split(",")
        return [str(x).strip() for x in v if str(x).strip()]

    ts, bs = items(t), items(blocks)
    if ts is not None:
        bad = [x for x in ts if not x.isdigit()]
        if bad:
            raise ProbeError(f"bad --t {bad[0]!r}: give timesteps as integers, e.g. --t 10,100")
        missing = [int(x) for x in ts if int(x) not in ff.timesteps]
        if missing:
            raise ProbeError(f"{ff.path} has no features at t={missing[0]}; it has t in "
                             f"{ff.timesteps}")
        ts = [int(x) for x in ts]
    for b in bs or []:
        if b not in ff.blocks:
            raise ProbeError(f"{ff.path} has no block {b!r}{suggest(b, ff.blocks)}; it has "
                             f"{', '.join(ff.blocks)}")
    keys = [k for k in ff.keys if (ts is None or k[0] in ts) and (bs is None or k[1] in bs)]
    if ts is not None and bs is not None:
        for k in ((tt, b) for tt in ts for b in bs):
            ff._check(k)
    if not keys:
        raise ProbeError(f"no (t, block) keys selected in {ff.path}")
    return keys


class Setup:
    """Open train/test files, check they go together, and carve the validation split."""

    def __init__(self, train, test, keys, cfg):
        self.cfg = cfg.resolved()
        self.train = _open(train)
        self.test = None if test is None else _open(test)
        self._opened = [ff for f, ff in ((train, self.train), (test, self.test))
                        if ff is not None and ff is not f]
        try:
            self._setup(keys)
        except BaseException:
            self.close()
            raise

    def _setup(self, keys):
        self.keys = [self.train._check(parse_key(k)) for k in keys]
        self.notes = []
        names = self.train.class_names
        labels = np.asarray(self.train.labels, dtype=np.int64)
        self.num_classes = len(names) if names else int(labels.max()) + 1 if len(labels) else 0
        self.class_names = names or [str(i) for i in range(self.num_classes)]
        _check_labels(self.train, labels, self.num_classes)
        if self.test is not None:
            self._check_test()
        self.train_rows, self.val_rows = split_rows(labels, self.cfg.val_fraction, self.cfg.seed)
        present = np.unique(labels[self.train_rows])
        if not len(present):
            raise ProbeError(f"{self.train.path} has no samples to train on")
        if len(present) < 2:
            raise ProbeError(f"{self.train.path} has a single class "
                             f"({self.class_names[present[0]]}) to train on: a classifier needs "
                             "at least two; extract features of more classes")
        if self.test is None:
            if not len(self.val_rows):
                raise ProbeError("nothing to evaluate on: pass a test file (--test) or a "
                                 "--val-fraction above 0")
            self.notes.append(f"no test file: evaluated on the validation split "
                              f"({len(self.val_rows)} samples held out of {self.train.path})")

    def close(self):
        """Close the files this setup opened (not those passed in open)."""
        for ff in self._opened:
            ff.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _check_test(self):
        tr, te = self.train, self.test
        check_compatible(tr, te, what=COMPATIBLE)
        if tr.class_names != te.class_names:
            raise ProbeError(f"{tr.path} and {te.path} have different class names/order: extract "
                             "both from the same dataset (train and test split)")
        for k in self.keys:
            te._check(k)
            if tr.shape(k) != te.shape(k):
                raise ProbeError(f"t{k[0]}/{k[1]} has shape {tr.shape(k)} in {tr.path} but "
                                 f"{te.shape(k)} in {te.path}: extract both the same way")
        _check_labels(te, np.asarray(te.labels), self.num_classes)
        if os.path.abspath(tr.path) == os.path.abspath(te.path):
            self.notes.append("the test file is the train file: accuracy is not held-out")
        elif tr.attrs.get("data") == te.attrs.get("data") and (
                shared := len(set(tr.ids) & set(te.ids))):
            # e.g. a flat image folder read as both splits
            self.notes.append(f"{shared} of the {len(te)} test images are also in the train file "
                              "(same dataset, same ids): accuracy is not held-out")
        elif tr.attrs.get("split") == "test" or te.attrs.get("split") == "train":
            self.notes.append(f"train file split is {tr.attrs.get('split')!r}, test file split is "
                              f"{te.attrs.get('split')!r}: check the files are not swapped")

    def view(self, key, head):
        """The input view of ``head`` on ``key``; a spatial head needs a spatial map."""
        kind = head_view(head)
        shape = self.train.shape(key)
        if kind == MAP and len(shape) != 3:
            raise ProbeError(
                f"the {head} head needs a spatial map but t{key[0]}/{key[1]} in {self.train.path} "
                f"is pooled to {shape} (--pool {self.train.attrs.get('pool', 'mean')}): re-extract "
                "with --pool avg4 (or --pool none for the full map)")
        return (key, kind)

    def describe_input(self, key, kind):
        shape = self.train.shape(key)
        if len(shape) == 3 and kind == VEC:
            return f"map {shape} global-average-pooled to ({shape[0]},)"
        return f"map {shape}" if len(shape) == 3 else f"pooled features {shape}"

    def eval_source(self, views):
        """(source, rows) the heads are evaluated on."""
        limit = self.cfg.memory_limit_gb * GB
        if self.test is None:
            return None, self.val_rows
        # read once, in order: streaming costs the same as loading
        return FeatureSource(self.test, views, limit, stream=True), np.arange(len(self.test))

    def eval_labels(self):
        return (np.asarray(self.test.labels) if self.test is not None
                else np.asarray(self.train.labels)[self.val_rows])


def _check_labels(ff, labels, num_classes):
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ProbeError(f"{ff.path} has labels outside 0..{num_classes - 1} (its class_names "
                         "list is shorter): the file is inconsistent, re-run `probe extract`")


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


# Linear probes per stacked grid on CPU, as widths summed: a batch of 256 rows of a grid
# then spans ~4 MB and stays in cache through forward and backward; larger grids run
# from main memory and end up slower than one probe at a time.  GPUs prefer one grid.
CPU_GRID_WIDTH = 4096


def _linear_grids(views, dims, num_classes, seed, device):
    cap = CPU_GRID_WIDTH if torch.device(device).type == "cpu" else float("inf")
    chunks = {}  # width -> list of member lists, each list within the cap
    for i, d in enumerate(dims):
        lists = chunks.setdefault(d, [[]])
        if lists[-1] and (len(lists[-1]) + 1) * d > cap:
            lists.append([])
        lists[-1].append(i)
    units = []
    for members in (m for lists in chunks.values() for m in lists):
        gens = [torch.Generator().manual_seed(head_seed(seed, views[i][0], "linear"))
                for i in members]
        grid = LinearGrid([dims[i] for i in members], num_classes, gens)
        units.append((members, Unit(grid, [views[i] for i in members], lambda m, i: m.export(i))))
    order = [i for members, _ in units for i in members]  # views, in the units' member order
    infos = [({}, dims[i] * num_classes + num_classes) for i in order]
    return [u for _, u in units], infos, order


def _build_units(setup, head, views, options, comparable_size):
    """(units, (options, params) per member, the view index of each member): the units
    that train ``head`` on every view, their members in order."""
    n, seed = setup.num_classes, setup.cfg.seed
    shapes = [view_shape(setup.train.shape(k), kind) for k, kind in views]
    if head == "linear":
        return _linear_grids(views, [s[0] for s in shapes], n, seed, setup.cfg.device)
    units, infos = [], []
    for view, shape in zip(views, shapes):
        with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's RNG
            torch.manual_seed(head_seed(seed, view[0], head))
            module, opts = build_head(head, shape, n, options, comparable_size)
        units.append(single_unit(module, view))
        infos.append((opts, count_params(module)))
    return units, infos, list(range(len(views)))


def train_heads(setup, head, keys, options=None, comparable_size=False, progress=True):
    """Train ``head`` on each of ``keys`` (neural heads: in one pass sharing batches) and
    evaluate; returns one :class:`FitResult` per key."""
    check_head(head)
    cfg = setup.cfg.for_head(head, len(setup.train_rows))
    views = [setup.view(k, head) for k in keys]
    if head in BASELINES:
        return [_fit_baseline(setup, head, view, options) for view in views]
    limit = cfg.memory_limit_gb * GB
    source = FeatureSource(setup.train, views, limit, cfg.stream)
    units, infos, order = _build_units(setup, head, views, options, comparable_size)
    with _deterministic(cfg.device):
        desc = f"{head} x{len(keys)}" if len(keys) > 1 else f"{head} t{keys[0][0]}/{keys[0][1]}"
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
                     selected_epoch=s["selected_epoch"], epochs_run=s["epochs_run"],
                     train_time_s=round(elapsed, 3),
                     keys_in_pass=len(keys), streamed=source.streamed)
        summary = _summary(setup, head, view, opts, params, comparable_size, sc, extra, cfg)
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
    summary = _summary(setup, head, view, opts, baseline_params(model), False, scores, extra, cfg)
    return FitResult(summary, scores, model)


def _summary(setup, head, view, opts, params, comparable_size, scores, extra, cfg):
    from .. import __version__

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


TRAIN_OPTIONS = set(TrainConfig.__dataclass_fields__)
HEAD_OPTIONS = {"hidden", "width", "depth", "dim", "num_heads", "pos_embed", "k", "C"}


def split_options(kwargs):
    """Keyword arguments -> (head options, TrainConfig); unknown names are an error."""
    unknown = set(kwargs) - TRAIN_OPTIONS - HEAD_OPTIONS
    if unknown:
        name = sorted(unknown)[0]
        raise ProbeError(f"unknown option {name!r}{suggest(name, TRAIN_OPTIONS | HEAD_OPTIONS)}")
    head = {k: v for k, v in kwargs.items() if k in HEAD_OPTIONS}
    cfg = TrainConfig(**{k: v for k, v in kwargs.items() if k in TRAIN_OPTIONS and v is not None})
    return head, cfg


def fit(train, *, t=None, block=None, head="linear", test=None, out=None,
        comparable_size=False, progress=True, **options):
    """Train ``head`` on features (t, block) of ``train`` and evaluate on ``test`` (or on the
    validation split carved from train when no test file is given).

    ``train``/``test``: paths or open :class:`~probe.store.FeatureFile`s.  ``head``: linear,
    mlp, cnn, attention, logreg or knn.  ``options``: head options (hidden, width, depth,
    dim, num_heads, pos_embed, k, C) and training options (see
    :class:`~probe.heads.train.TrainConfig`: epochs, batch_size, optimizer, lr,
    weight_decay, warmup_epochs, patience, val_fraction, seed, device, memory_limit_gb,
    stream).  ``out``: also save the summary as JSON there.  Returns a :class:`FitResult`.
    """
    check_head(head)
    head_opts, cfg = split_options(options)
    with opened(train) as tr:
        key = resolve_key(tr, t, block)
        with Setup(tr, test, [key], cfg) as setup:
            result = train_heads(setup, head, [key], head_opts, comparable_size, progress)[0]
    if out is not None:
        result.save(out)
    return result
