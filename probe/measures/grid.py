"""The (t, block) grid: choose keys, pair samples by id, stream batches, accumulate HSIC.

Memory stays bounded by one batch: for each batch, the keys' rows are read (keys of one
size together; a key with large rows alone, in column slabs), turned into one kernel
matrix per key and stacked; the pair matmul then consumes the stack.
"""
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import ProbeError
from .core import Estimator, HSICAccumulator, kernels_into

# HDF5 costs ~70 us per selection but streams ~1.5 GB/s, so rows closer than this many
# bytes are read as one slice and the rows in between dropped
GAP_BYTES = 128 << 10
# a single read of one key's batch is kept under this; larger rows are read in slabs of
# channels (axis 1) and their Gram products summed
SLAB_BYTES = 256 << 20
# keys multiplied together keep their Gram matrices (and the RBF's temporaries) under this
GROUP_GRAM_BYTES = 1 << 30
# refuse batches whose stacked Gram matrices would not fit in memory comfortably
MAX_GRAM_BYTES = 8 << 30


def align_ids(fa: Any, fb: Any) -> np.ndarray | None:
    """Row of ``fb`` for each row of ``fa`` (None when the files list the same ids in the
    same order)."""
    ids_a, ids_b = list(fa.ids), list(fb.ids)
    if ids_a == ids_b:
        return None
    pos = {s: i for i, s in enumerate(ids_b)}
    for f, ids, lookup in ((fa, ids_a, set(ids_a)), (fb, ids_b, pos)):
        if len(lookup) != len(ids):
            raise ProbeError(f"{f.path} lists {len(ids) - len(lookup)} sample ids twice: CKA pairs "
                             "samples by id, so ids must be unique (re-run `probe extract`)")
    only_a = sum(s not in pos for s in ids_a)
    only_b = len(set(ids_b) - set(ids_a))
    if only_a or only_b:
        raise ProbeError(
            f"{fa.path} and {fb.path} hold different samples: {only_a} of the {len(ids_a)} ids in "
            f"the first are not in the second and {only_b} of the {len(ids_b)} in the second are "
            "not in the first; extract both from the same images (CKA pairs samples by id)")
    return np.fromiter((pos[s] for s in ids_a), dtype=np.int64, count=len(ids_a))


def make_batches(n: int, minibatch: int | None, min_batch: int, shuffle: bool = True,
                 seed: int = 0) -> list[np.ndarray]:
    """Row indices of each batch (sorted within a batch, for reading).  A last batch smaller
    than ``min_batch`` (the estimator's minimum) joins the one before it."""
    what = "the unbiased HSIC" if min_batch == 4 else "CKA"
    if n < min_batch:
        raise ProbeError(f"{what} needs at least {min_batch} samples, got {n}")
    if minibatch is None or minibatch >= n:
        return [np.arange(n)]
    if minibatch < min_batch:
        raise ProbeError(f"minibatch {minibatch} is too small: {what} needs batches of at least "
                         f"{min_batch} samples (use e.g. --minibatch 1024)")
    # files are usually sorted by class; batches must be samples of the whole set
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    batches = [order[i:i + minibatch] for i in range(0, n, minibatch)]
    if len(batches[-1]) < min_batch:
        batches[-2:] = [np.concatenate(batches[-2:])]
    return [np.sort(b) for b in batches]


def read_rows(ds: Any, idx: Any, cols: slice = slice(None)) -> np.ndarray:
    """``ds[idx, cols]`` for ascending row indices, reading nearby rows as one slice."""
    idx = np.asarray(idx)
    span = (lambda a, b: ds[a:b]) if ds.ndim == 1 else (lambda a, b: ds[a:b, cols])
    if idx[-1] - idx[0] + 1 == len(idx):
        return span(idx[0], idx[-1] + 1)
    row_bytes = ds.dtype.itemsize * int(np.prod(ds.shape[1:]))
    if ds.ndim > 1:
        row_bytes = row_bytes * len(range(*cols.indices(ds.shape[1]))) // ds.shape[1]
    gap = max(1, GAP_BYTES // max(row_bytes, 1))
    runs = np.split(idx, np.nonzero(np.diff(idx) > gap)[0] + 1)
    return np.concatenate([span(r[0], r[-1] + 1)[r - r[0]] for r in runs])


def _group(sizes, n, itemsize):
    """Which keys share one batched Gram product (fewer, larger kernels): same per-sample
    size, the group's features under SLAB_BYTES (in the compute dtype) and its kernels
    under GROUP_GRAM_BYTES.  A key too big on its own is alone and read in slabs.  Returns
    lists of key positions; the processing order is their concatenation."""
    groups: list[list[int]] = []
    open_: dict[int, list[int]] = {}
    most = max(1, GROUP_GRAM_BYTES // (n * n * 8))
    for i, d in enumerate(sizes):
        one = n * d * itemsize
        g = open_.get(d)
        if one > SLAB_BYTES or g is None or (len(g) + 1) * one > SLAB_BYTES or len(g) >= most:
            g = []
            groups.append(g)
            if one <= SLAB_BYTES:
                open_[d] = g
        g.append(i)
    return groups


class FileSource:
    """Keys of a feature file, read a batch of rows at a time."""

    def __init__(self, ff, keys):
        self.ff, self.keys = ff, list(keys)
        self.name = ff.path
        self.dsets = [ff.dataset(k) for k in self.keys]

    def __len__(self):
        return len(self.ff)

    def groups(self, n: int, itemsize: int) -> list[list[int]]:
        return _group([int(np.prod(d.shape[1:])) for d in self.dsets], n, itemsize)

    def slabs(self, group: Sequence[int], idx: Any) -> Iterator[np.ndarray]:
        """(k, n, ...) pieces of rows ``idx`` (any order) of the keys in ``group``: one
        piece with all of them, or column slabs (along axis 1) of a single large key."""
        order = np.argsort(idx, kind="stable")
        rows = np.asarray(idx)[order]
        back = None if np.array_equal(order, np.arange(len(order))) else np.argsort(order)
        pick = (lambda a: a) if back is None else (lambda a: a[back])
        dsets = [self.dsets[i] for i in group]
        width = dsets[0].shape[1] if dsets[0].ndim > 1 else 1
        bytes_per_col = dsets[0].dtype.itemsize * int(np.prod(dsets[0].shape[1:])) // width * len(rows)
        step = max(1, SLAB_BYTES // max(bytes_per_col, 1))
        if len(group) == 1 and 1 < width and step < width:
            for c in range(0, width, step):
                yield pick(read_rows(dsets[0], rows, slice(c, c + step)))[None]
            return
        out = np.empty((len(group), len(rows), int(np.prod(dsets[0].shape[1:]))), dsets[0].dtype)
        for o, ds in zip(out, dsets):
            o[...] = pick(read_rows(ds, rows).reshape(len(rows), -1))
        yield out


class ArraySource:
    """In-memory representations: a list of arrays or tensors of shape (N, ...)."""

    def __init__(self, arrays):
        self.arrays = list(arrays)
        if not self.arrays:
            raise ProbeError("no representations given to CKA")
        n = {len(a) for a in self.arrays}
        if len(n) != 1:
            raise ProbeError(f"representations have different numbers of samples {sorted(n)}: "
                             "CKA needs the same samples in each")
        self.keys = list(range(len(self.arrays)))
        self.name = "arrays"

    def __len__(self):
        return len(self.arrays[0])

    def groups(self, n: int, itemsize: int) -> list[list[int]]:
        return _group([int(np.prod(a.shape[1:])) for a in self.arrays], n, itemsize)

    def slabs(self, group: Sequence[int], idx: Any) -> Iterator[np.ndarray | torch.Tensor]:
        rows = [self.arrays[i] for i in group]
        if all(torch.is_tensor(a) for a in rows):
            t = torch.as_tensor(np.asarray(idx), device=rows[0].device)
            yield torch.stack([a[t].reshape(len(idx), -1) for a in rows])
        else:
            yield np.stack([np.asarray(a)[idx].reshape(len(idx), -1) for a in rows])


def _stack(src, groups, idx, est):
    """Kernels (keys, n*n), row sums (keys, n) and constant flags (keys,) of one batch, in
    the groups' order."""
    n = len(idx)
    kernels = torch.empty(len(src.keys), n * n, dtype=torch.float64, device=est.device)
    sums, flags, i = [], [], 0
    for g in groups:
        r, c = kernels_into(src.slabs(g, idx), est, kernels[i:i + len(g)].view(len(g), n, n))
        sums.append(r)
        flags.append(c)
        i += len(g)
    return kernels, torch.cat(sums), torch.cat(flags)


def run(src_a: FileSource | ArraySource, src_b: FileSource | ArraySource | None, est: Estimator,
        minibatch: int | None = None, shuffle: bool = True, seed: int = 0,
        rows_b: np.ndarray | None = None, progress: bool = False
        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """CKA between every key of ``src_a`` and every key of ``src_b`` (or of ``src_a`` when
    ``src_b`` is None).  ``rows_b[i]`` is the row of ``src_b`` paired with row i of
    ``src_a``.  Returns (matrix, constant rows, constant columns, batch sizes)."""
    batches = make_batches(len(src_a), minibatch, est.min_batch, shuffle, seed)
    n = max(len(b) for b in batches)
    num_keys = len(src_a.keys) + (len(src_b.keys) if src_b is not None else 0)
    need = num_keys * n * n * 8
    if need > MAX_GRAM_BYTES:
        raise ProbeError(f"CKA over batches of {n} samples needs {need / 2**30:.1f} GiB for the "
                         f"{num_keys} Gram matrices: use a minibatch (e.g. --minibatch 1024)")
    itemsize = torch.empty((), dtype=est.dtype).element_size()
    # keys of one size are multiplied together; the matrix is put back in key order at the end
    groups_a = src_a.groups(n, itemsize)
    groups_b = src_b.groups(n, itemsize) if src_b is not None else []  # unused without src_b
    acc = HSICAccumulator(est)
    with torch.no_grad():
        for idx in tqdm(batches, desc="CKA", unit="batch", disable=not progress or len(batches) < 2):
            a = _stack(src_a, groups_a, idx, est)
            b = None if src_b is None else _stack(src_b, groups_b, idx if rows_b is None else rows_b[idx], est)
            acc.add(a, b)
    matrix, dead_a, dead_b = acc.cka()
    back_a = np.argsort(np.concatenate(groups_a))
    back_b = back_a if src_b is None else np.argsort(np.concatenate(groups_b))
    return (matrix[np.ix_(back_a, back_b)], dead_a[back_a], dead_b[back_b],
            [len(b) for b in batches])
