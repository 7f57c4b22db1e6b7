"""Batches of cached features for training heads: from memory when they fit, streamed
from the HDF5 file otherwise.

A *view* is ``(key, MAP)`` (the spatial map as stored) or ``(key, VEC)`` (a vector: the
stored pooled features, or the map global-average-pooled).  Several views are served
from the same rows at once, so heads on different keys share every batch.

Shuffling: each epoch visits the training rows in an order drawn from (seed, epoch).
In memory that is a full permutation.  Streamed, the file is read in contiguous blocks
of rows (fast in HDF5; random single rows are ~100x slower): the blocks are shuffled and
grouped into windows that fit the memory limit (at least 16 blocks each: blocks shrink
when little fits), and rows are shuffled within a window.
When one window holds every row, the order is the in-memory one, so results do not
depend on how the data were read.

Given a ``device``, batches come as tensors on it.  Features in memory are then moved
there once and each batch is sliced out by index on the device (on the CPU the tensors
share the arrays' memory), so the host never copies or uploads a batch; streamed
windows are moved as read.
"""
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

MAP, VEC = "map", "vec"
BLOCK_ROWS = 256
READ_BYTES = 64 << 20  # per read when loading or evaluating sequentially


def view_shape(shape: Sequence[int], view: str) -> tuple[int, ...]:
    return tuple(shape) if view == MAP else tuple(shape[:1])


def to_view(x: Any, view: str) -> np.ndarray:
    """A batch read from the file -> float32 in the view's shape (the same per-row
    arithmetic whether read whole or in blocks, so both paths agree exactly)."""
    x = np.asarray(x, dtype=np.float32)
    return x.mean(axis=(2, 3), dtype=np.float32) if view == VEC and x.ndim == 4 else x


def epoch_windows(train_rows: np.ndarray, num_rows: int, seed: int, epoch: int, window_rows: int,
                  block_rows: int = BLOCK_ROWS) -> list[np.ndarray]:
    """The rows of one epoch, as a list of windows (each a permuted array of row indices)."""
    rng = np.random.default_rng([seed, epoch])
    if window_rows >= num_rows:
        return [rng.permutation(train_rows)]
    keep = np.zeros(num_rows, bool)
    keep[train_rows] = True
    blocks = rng.permutation(math.ceil(num_rows / block_rows))
    per = max(1, window_rows // block_rows)
    windows = []
    for i in range(0, len(blocks), per):
        rows = np.concatenate([np.arange(b * block_rows, min((b + 1) * block_rows, num_rows))
                               for b in np.sort(blocks[i:i + per])])
        windows.append(rng.permutation(rows[keep[rows]]))
    return windows


def room_on(device: str | torch.device, nbytes: int) -> bool:
    """Whether ``nbytes`` of features can be held on ``device`` next to a head's training
    (on a GPU: within half its free memory)."""
    device = torch.device(device)
    if device.type != "cuda":
        return True
    return nbytes <= torch.cuda.mem_get_info(device)[0] // 2


def _tensors(xs, y, device):
    return ({v: torch.from_numpy(np.ascontiguousarray(x)).to(device) for v, x in xs.items()},
            torch.from_numpy(np.asarray(y, dtype=np.int64)).to(device))


def batches_of(order: Any, batch_size: int) -> list[Any]:
    # BatchNorm cannot train on one sample: a last batch of one is dropped
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)
            if len(order[i:i + batch_size]) > 1]


class FeatureSource:
    """Serve ``views`` of an open feature file ``ff`` in batches.

    ``memory_limit``: bytes of float32 features that may be held at once; ``stream``:
    None picks memory or streaming by that limit, True/False forces one.
    """

    def __init__(self, ff, views, memory_limit, stream=None, block_rows=BLOCK_ROWS):
        self.ff, self.views, self.block_rows = ff, list(dict.fromkeys(views)), block_rows
        self.num_rows = len(ff)
        self.row_bytes = sum(4 * int(np.prod(view_shape(ff.shape(k), v))) for k, v in self.views)
        fits = self.row_bytes * self.num_rows <= memory_limit
        self.streamed = (not fits) if stream is None else bool(stream)
        if self.streamed:
            fit = max(1, int(memory_limit // max(self.row_bytes, 1)))
            # at least 16 blocks per window, so a batch mixes rows from all over the file
            # (files are often in class order) even when little fits in memory
            self.block_rows = max(1, min(block_rows, fit // 16))
            self.window_rows = max(1, fit // self.block_rows) * self.block_rows
        else:
            self.window_rows = self.num_rows
            self.arrays = {v: self._read_all(v) for v in self.views}
        # (device, {view or "labels": tensor}): see held()
        self._held: tuple[torch.device | None, dict[Any, torch.Tensor]] = (None, {})

    @property
    def nbytes(self) -> int:
        return self.row_bytes * self.num_rows

    def held(self, views: Sequence[Any], device: str | torch.device
             ) -> tuple[dict[Any, torch.Tensor], torch.Tensor] | None:
        """``({view: tensor}, labels)`` of the in-memory features on ``device``, moved there
        once and kept; None when streamed or when they do not fit there."""
        if self.streamed:
            return None
        device = torch.device(device)
        if self._held[0] != device:
            self._held = (device, {})
        held = self._held[1]
        missing = [v for v in views if v not in held]
        if missing and not room_on(device, sum(self.arrays[v].nbytes for v in missing)):
            return None
        for v in missing:
            held[v] = torch.from_numpy(self.arrays[v]).to(device)
        if "labels" not in held:
            held["labels"] = torch.from_numpy(np.asarray(self.ff.labels, np.int64)).to(device)
        return {v: held[v] for v in views}, held["labels"]

    def _read_range(self, view, a, b):
        """Rows [a, b) of ``view``, read a few MB of stored data at a time (so pooling a
        map never holds more than that many raw maps)."""
        key, kind = view
        ds = self.ff.dataset(key)
        raw = max(1, int(np.prod(ds.shape[1:])) * ds.dtype.itemsize)
        step = max(1, READ_BYTES // raw)
        parts = [to_view(ds[i:min(i + step, b)], kind) for i in range(a, b, step)]
        if not parts:
            return np.zeros((0,) + view_shape(ds.shape[1:], kind), np.float32)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _read_all(self, view):
        return self._read_range(view, 0, self.num_rows)

    def _read_rows(self, rows, views):
        """``{view: array}`` for sorted ``rows``, read as contiguous runs of blocks."""
        runs = np.split(rows, np.flatnonzero(np.diff(rows // self.block_rows) > 1) + 1)
        out = {}
        for view in views:
            parts = []
            for run in runs:
                a = run[0] // self.block_rows * self.block_rows
                b = min((run[-1] // self.block_rows + 1) * self.block_rows, self.num_rows)
                parts.append(self._read_range(view, a, b)[run - a])
            out[view] = np.concatenate(parts)
        return out

    def epoch_batches(self, train_rows: np.ndarray, batch_size: int, seed: int, epoch: int,
                      views: Sequence[Any] | None = None, device: str | torch.device | None = None
                      ) -> Iterator[tuple[dict[Any, Any], Any]]:
        """Yield ``({view: array}, labels)`` over the training rows in this epoch's order;
        with ``device``, tensors on it."""
        views = self.views if views is None else views
        held = None if device is None else self.held(views, device)
        labels = self.ff.labels
        for window in epoch_windows(train_rows, self.num_rows, seed, epoch, self.window_rows,
                                    self.block_rows):
            if held is not None:
                xs, y = held
                for rows in batches_of(torch.from_numpy(window).to(device), batch_size):
                    yield {v: x.index_select(0, rows) for v, x in xs.items()}, y[rows]
                continue
            if self.streamed:
                rows = np.sort(window)
                buf = self._read_rows(rows, views)
                batches = (({v: x[pos] for v, x in buf.items()}, labels[rows[pos]])
                           for pos in batches_of(np.searchsorted(rows, window), batch_size))
            else:
                batches = (({v: self.arrays[v][rows] for v in views}, labels[rows])
                           for rows in batches_of(window, batch_size))
            for xs, y in batches:
                yield (xs, y) if device is None else _tensors(xs, y, device)

    def eval_batches(self, rows: Any, batch_size: int, views: Sequence[Any] | None = None,
                     device: str | torch.device | None = None
                     ) -> Iterator[tuple[dict[Any, Any], Any]]:
        """Yield ``({view: array}, labels)`` over ``rows`` (sorted), in order; with
        ``device``, tensors on it."""
        views = self.views if views is None else views
        rows = np.sort(np.asarray(rows))
        held = None if device is None else self.held(views, device)
        step = max(batch_size, READ_BYTES // max(self.row_bytes, 1))
        for i in range(0, len(rows), step):
            chunk = rows[i:i + step]
            if held is not None:
                index = torch.from_numpy(chunk).to(device)
                for j in range(0, len(chunk), batch_size):
                    part = index[j:j + batch_size]
                    yield {v: x.index_select(0, part) for v, x in held[0].items()}, held[1][part]
                continue
            if self.streamed:
                data = self._read_rows(chunk, views)
            else:
                data = {v: self.arrays[v][chunk] for v in views}
            for j in range(0, len(chunk), batch_size):
                xs = {v: x[j:j + batch_size] for v, x in data.items()}
                y = self.ff.labels[chunk[j:j + batch_size]]
                yield (xs, y) if device is None else _tensors(xs, y, device)
