"""Before any head trains: open the train and test files, check that they go together,
and carve the validation split from train."""
import contextlib
import os

import numpy as np

from ..errors import ProbeError
from ..selection import Key, key_label
from ..store import check_compatible, opened
from .build import MAP, VEC, head_view
from .data import FeatureSource

# what must match between a train and a test file (the key itself is checked separately)
COMPATIBLE = ("model", "checkpoint_sha256", "weights_sha256", "pool", "add_noise", "ensemble")
GB = 1 << 30


def split_rows(labels: np.ndarray, val_fraction: float, seed: int
               ) -> tuple[np.ndarray, np.ndarray]:
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


class Setup:
    """Open train/test files, check they go together, and carve the validation split."""

    def __init__(self, train, test, keys, cfg):
        self.cfg = cfg.resolved()
        self._files = contextlib.ExitStack()  # closes what it opened, not files passed open
        try:
            self.train = self._files.enter_context(opened(train))
            self.test = None if test is None else self._files.enter_context(opened(test))
            self._setup(keys)
        except BaseException:
            self.close()
            raise

    def _setup(self, keys):
        self.keys = [self.train.key(k) for k in keys]
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

    def close(self) -> None:
        """Close the files this setup opened (not those passed in open)."""
        self._files.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _check_test(self):
        tr, te = self.train, self.test
        assert te is not None  # called only with a test file
        check_compatible(tr, te, what=COMPATIBLE)
        if tr.class_names != te.class_names:
            raise ProbeError(f"{tr.path} and {te.path} have different class names/order: extract "
                             "both from the same dataset (train and test split)")
        for k in self.keys:
            te.key(k)
            if tr.shape(k) != te.shape(k):
                raise ProbeError(f"{key_label(k)} has shape {tr.shape(k)} in {tr.path} but "
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

    def view(self, key: Key, head: str) -> tuple[Key, str]:
        """The input view of ``head`` on ``key``; a spatial head needs a spatial map."""
        kind = head_view(head)
        shape = self.train.shape(key)
        if kind == MAP and len(shape) != 3:
            raise ProbeError(
                f"the {head} head needs a spatial map but {key_label(key)} in {self.train.path} "
                f"is pooled to {shape} (--pool {self.train.attrs.get('pool', 'mean')}): re-extract "
                "with --pool avg4 (or --pool none for the full map)")
        return (key, kind)

    def describe_input(self, key: Key, kind: str) -> str:
        shape = self.train.shape(key)
        if len(shape) == 3 and kind == VEC:
            return f"map {shape} global-average-pooled to ({shape[0]},)"
        return f"map {shape}" if len(shape) == 3 else f"pooled features {shape}"

    def eval_source(self, views: list[tuple[Key, str]]) -> tuple[FeatureSource | None, np.ndarray]:
        """(source, rows) the heads are evaluated on."""
        limit = self.cfg.memory_limit_gb * GB
        if self.test is None:
            return None, self.val_rows
        # read once, in order: streaming costs the same as loading
        return FeatureSource(self.test, views, limit, stream=True), np.arange(len(self.test))

    def eval_labels(self) -> np.ndarray:
        return (np.asarray(self.test.labels) if self.test is not None
                else np.asarray(self.train.labels)[self.val_rows])


def _check_labels(ff, labels, num_classes):
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ProbeError(f"{ff.path} has labels outside 0..{num_classes - 1} (its class_names "
                         "list is shorter): the file is inconsistent, re-run `probe extract`")
