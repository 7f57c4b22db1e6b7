"""The HDF5 feature file: layout, writing, and reading.

Layout (readable with plain h5py)::

    /                      attrs: format="probe-features", format_version, complete,
                           num_samples, and how the features were made (see README)
    /labels       (N,)     int64 class index per sample
    /ids          (N,)     str   sample id (relative path or index in the dataset)
    /class_names  (C,)     str
    /masks        (N, S, S) uint8 label map per sample, only for datasets with masks; attrs:
                           class_names (JSON), ignore_index, description (how made, aligned)
    /features/t{T}/{BLOCK} (N, ...) one dataset per (timestep, block), chunked along N
    /features/{BLOCK}      (N, ...) networks without a timestep (timm, torchvision): one
                                    dataset per block, right under /features (no group)

Non-scalar attributes (model description, the command, ...) are stored as JSON
strings.  A file whose ``complete`` attribute is not true is never read.
"""
from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Iterator, Sequence

import h5py
import numpy as np

from .errors import ProbeError
from .files import atomic_path
from .selection import Catalog, Key, Spec, key_label, parse_key, t_from_text, t_value

FORMAT = "probe-features"
FORMAT_VERSION = 1
NOISE_ATTRS = ("noise_seed", "ensemble", "add_noise")  # absent without timesteps
_STR = h5py.string_dtype("utf-8")


def key_name(t: int | float | None, block: str) -> str:
    """A key's label, which is also its path under /features (see :func:`key_label`)."""
    return key_label((t, block))


def _attr_value(v):
    if isinstance(v, (str, bool, int, float, np.integer, np.floating, np.bool_)):
        return v
    if v is None:
        return "null"
    return json.dumps(v)


def _read_attr(v):
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, str):
        try:
            return json.loads(v)
        except (ValueError, TypeError):
            return v
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


CHUNK_BYTES = 1 << 20


def chunk_rows(shape: Sequence[int], itemsize: int, target_bytes: int = CHUNK_BYTES) -> int:
    """Rows per chunk so that a chunk is about 1 MiB (HDF5 likes 10 KiB - 1 MiB)."""
    row = int(np.prod(shape[1:])) * itemsize if len(shape) > 1 else itemsize
    return int(max(1, min(shape[0], target_bytes // max(row, 1))))


def create(path: str | os.PathLike, *, num_samples: int, shapes: dict[Key, Sequence[int]],
           dtype: Any, labels: Any, ids: Sequence[Any], class_names: Sequence[str],
           attrs: dict[str, Any]) -> h5py.File:
    """Create a feature file with empty datasets; ``shapes`` maps (t, block) -> per-sample
    shape.  The file is marked incomplete until :func:`mark_complete`."""
    # HDF5 keeps up to 8 MiB of chunks per dataset by default: with many (t, block) keys the
    # merge would hold gigabytes.  One chunk (about 1 MiB, see chunk_rows) is all it needs.
    f = h5py.File(path, "w", rdcc_nbytes=CHUNK_BYTES)
    f.attrs["format"] = FORMAT
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["complete"] = False
    for k, v in attrs.items():
        f.attrs[k] = _attr_value(v)
    f.attrs["num_samples"] = int(num_samples)  # the rows stored, whatever the settings asked
    f.create_dataset("labels", data=np.asarray(labels, dtype=np.int64))
    f.create_dataset("ids", data=np.asarray([str(i) for i in ids], dtype=object), dtype=_STR)
    f.create_dataset("class_names", data=np.asarray(list(class_names), dtype=object), dtype=_STR)
    itemsize = np.dtype(dtype).itemsize
    for (t, block), shape in shapes.items():
        full = (int(num_samples),) + tuple(int(s) for s in shape)
        ds = f.create_dataset(f"features/{key_name(t, block)}", shape=full, dtype=dtype,
                              chunks=(chunk_rows(full, itemsize),) + full[1:] if num_samples else None)
        if t is not None:
            ds.attrs["t"] = t_value(t)
        ds.attrs["block"] = block
    return f


def mark_complete(f: h5py.File) -> None:
    f.attrs["complete"] = True
    f.flush()


def create_masks(f: Any, num_samples: int, size: int, class_names: Sequence[str],
                 ignore_index: int, description: str = "") -> Any:
    """The empty /masks dataset (uint8, one ``size`` x ``size`` label map per sample)."""
    full = (int(num_samples), int(size), int(size))
    ds = f.create_dataset("masks", shape=full, dtype=np.uint8,
                          chunks=(chunk_rows(full, 1),) + full[1:] if num_samples else None)
    ds.attrs["class_names"] = json.dumps(list(class_names))
    ds.attrs["ignore_index"] = int(ignore_index)
    ds.attrs["description"] = description
    return ds


def write_features(path: str | os.PathLike, features: dict[Any, Any], *, labels: Any,
                   ids: Sequence[Any] | None = None, class_names: Sequence[str] | None = None,
                   attrs: dict[str, Any] | None = None, dtype: Any = np.float32,
                   masks: Any = None, mask_class_names: Sequence[str] | None = None,
                   ignore_index: int = 255) -> str | os.PathLike:
    """Write in-memory features ``{(t, block): array (N, ...)}`` as a complete feature file
    (for small data, tests and conversions; `probe extract` streams instead)."""
    labels = np.asarray(labels)
    n = len(labels)
    ids = list(range(n)) if ids is None else ids
    if class_names is None:
        class_names = [str(c) for c in range(int(labels.max()) + 1 if n else 0)]
    keys = [parse_key(k) for k in features]
    blocks = list(dict.fromkeys(b for _, b in keys))
    # without a model, the blocks given (in the order given) are the model's list
    base = {"timesteps": sorted({t for t, _ in keys if t is not None}), "blocks": blocks,
            "model_blocks": blocks}
    if len({t is None for t, _ in keys}) > 1:
        raise ProbeError("a feature file holds keys with timesteps or keys without, not both")
    with atomic_path(path) as tmp, create(
            tmp, num_samples=n, shapes={k: np.shape(v)[1:] for k, v in zip(keys, features.values())},
            dtype=dtype, labels=labels, ids=ids, class_names=class_names,
            attrs={**base, **(attrs or {})}) as f:
        for k, v in zip(keys, features.values()):
            f[f"features/{key_name(*k)}"][...] = np.asarray(v, dtype=dtype)
        if masks is not None:
            masks = np.asarray(masks, dtype=np.uint8)
            names = mask_class_names or [str(c) for c in range(int(masks[masks != ignore_index].max()) + 1)]
            create_masks(f, n, masks.shape[-1], names, ignore_index)[...] = masks
        mark_complete(f)
    return path


class FeatureFile:
    """A complete feature file, open for reading.

    ``keys``: the (t, block) pairs in the file, timesteps ascending and blocks in the
    model's forward order.  ``load(key)`` reads one into memory; ``dataset(key)`` gives the
    h5py dataset for streaming.
    """

    def __init__(self, path: str | os.PathLike, require_complete: bool = True):
        self.path = str(path)
        if not os.path.exists(self.path):
            raise ProbeError(f"feature file not found: {self.path}")
        if not os.access(self.path, os.R_OK):
            raise ProbeError(f"feature file is not readable: {self.path}")
        try:
            self.h5 = h5py.File(self.path, "r")
        except OSError as e:
            raise ProbeError(f"{self.path} is not a readable HDF5 file (truncated or corrupt?): "
                             "re-run `probe extract` to make it again") from e
        a = self.h5.attrs
        if a.get("format") != FORMAT:
            self.close()
            raise ProbeError(f"{self.path} is an HDF5 file but not a probe feature file "
                             "(made by another tool?): make one with `probe extract`")
        self.complete = bool(a.get("complete", False))
        if require_complete and not self.complete:
            self.close()
            raise ProbeError(f"{self.path} is incomplete (the run that made it stopped early): "
                             "re-run the same `probe extract` command to finish it")
        self.attrs = {k: _read_attr(v) for k, v in a.items()}
        try:
            self.labels = self.h5["labels"][...]
            self.ids = [s.decode() if isinstance(s, bytes) else str(s) for s in self.h5["ids"][...]]
            self.class_names = [s.decode() if isinstance(s, bytes) else str(s)
                                for s in self.h5["class_names"][...]]
            order = {b: i for i, b in enumerate(self.attrs.get("blocks") or [])}
            keys: list[Key] = []
            for name, item in self.h5["features"].items():
                if isinstance(item, h5py.Dataset):  # a network without timesteps
                    keys.append((None, name))
                else:
                    keys.extend((t_from_text(name[1:]), block) for block in item)
        except (KeyError, OSError) as e:
            self.close()
            raise ProbeError(f"{self.path} is corrupt ({e}): re-run `probe extract`") from e
        self.keys = sorted(keys, key=lambda k: (k[0], order.get(k[1], len(order)), k[1]))
        masks = self.h5.get("masks")
        self.mask_class_names = (None if masks is None else  # None: no masks in the file
                                 list(_read_attr(masks.attrs["class_names"])))
        self.ignore_index = None if masks is None else int(masks.attrs["ignore_index"])
        self.catalog = Catalog(self.keys, self.attrs.get("model_blocks"), self.path,
                               self.attrs.get("model"),
                               {k: self.attrs.get(k) for k in ("noise_levels", "logsnr_range")})

    # context manager
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        try:
            self.h5.close()
        except Exception:
            pass

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    @property
    def timesteps(self) -> list[int | float]:
        """The timesteps held; [] for a network without timesteps (see ``has_timesteps``)."""
        return sorted({t for t, _ in self.keys if t is not None})

    @property
    def has_timesteps(self) -> bool:
        return not self.catalog.timeless

    @property
    def blocks(self) -> list[str]:
        return list(dict.fromkeys(b for _, b in self.keys))

    @property
    def model_blocks(self) -> list[str] | None:
        """The model's full block list, in forward order, that block ids count in (None
        for files written before it was recorded)."""
        return self.catalog.model_blocks

    @property
    def has_masks(self) -> bool:
        return self.mask_class_names is not None

    @property
    def masks(self) -> h5py.Dataset:
        """The (N, S, S) uint8 label maps (see :mod:`probe.data.segmentation`)."""
        if not self.has_masks:
            raise ProbeError(f"{self.path} has no masks: extract a dataset with masks "
                             "(fashion-mnist-seg, demo-seg, voc2012, ade20k, segfolder:ROOT)")
        return self.h5["masks"]

    def noise_levels(self) -> dict[int | float, dict[str, float]]:
        """Per t held: α_t, σ_t and log-SNR as extraction recorded them ({} for files
        written before probe recorded them, and for networks without timesteps)."""
        table = self.attrs.get("noise_levels") or {}
        return {t_from_text(k): v for k, v in table.items()}

    def select(self, t: Spec = "all", blocks: Spec = "all", keys: Spec = None) -> list[Key]:
        """The (t, block) keys named by ``t`` x ``blocks`` or by ``keys``, in file order
        (grammar: :mod:`probe.selection`; blocks by name or 1-based id)."""
        return self.catalog.select(t, blocks, keys)

    def key(self, key: str | Key) -> Key:
        """One key, 'tT/BLOCK' or (t, block) with BLOCK a name or id, checked to exist."""
        return self.catalog.key(key)

    def dataset(self, key: str | Key) -> h5py.Dataset:
        return self.h5[f"features/{key_name(*self.key(key))}"]

    def shape(self, key: str | Key) -> tuple[int, ...]:
        """Per-sample shape: (D,) pooled, (C, H, W) spatial."""
        return tuple(self.dataset(key).shape[1:])

    def is_spatial(self, key: str | Key) -> bool:
        return len(self.shape(key)) == 3

    def load(self, key: str | Key, rows: Any = None) -> np.ndarray:
        ds = self.dataset(key)
        return ds[...] if rows is None else ds[rows]

    def iter_batches(self, keys: Sequence[str | Key], batch_size: int
                     ) -> Iterator[tuple[int, int, dict[Key, np.ndarray]]]:
        """Yield (start, stop, {key: array}) over all samples, ``batch_size`` rows at a time;
        memory stays bounded by one batch of every key."""
        dsets = {key: self.dataset(key) for key in (self.key(k) for k in keys)}
        for start in range(0, len(self), batch_size):
            stop = min(start + batch_size, len(self))
            yield start, stop, {k: d[start:stop] for k, d in dsets.items()}

    def describe(self) -> dict[str, Any]:
        """The settings that make two files comparable (model, pooling, dtype, ...); the
        noise settings are None for a network without timesteps (older files recorded
        them there)."""
        a = self.attrs
        return {k: a.get(k) if self.has_timesteps or k not in NOISE_ATTRS else None
                for k in ("model", "checkpoint_sha256", "pool", "timesteps", *NOISE_ATTRS)}


def open_features(path: str | os.PathLike, require_complete: bool = True) -> FeatureFile:
    """Open a feature file for reading.  ``require_complete=False`` also opens one whose run
    stopped before the end (to inspect it: its features are not to be trusted)."""
    return FeatureFile(path, require_complete)


@contextlib.contextmanager
def opened(f: str | os.PathLike | FeatureFile) -> Iterator[FeatureFile]:
    """An open FeatureFile for a path (closed after) or an open FeatureFile (left open)."""
    if isinstance(f, FeatureFile):
        yield f
        return
    ff = open_features(f)
    try:
        yield ff
    finally:
        ff.close()


def check_compatible(train: FeatureFile, test: FeatureFile,
                     what: Sequence[str] = ("model", "checkpoint_sha256", "pool", "add_noise")
                     ) -> None:
    """Raise unless two files were made the same way (for train/test pairs).  Without
    timesteps there is no noise: its settings are not compared (older files of such
    networks recorded them, newer ones do not)."""
    timeless = not train.has_timesteps and not test.has_timesteps
    for k in what:
        if timeless and k in NOISE_ATTRS:
            continue
        a, b = train.attrs.get(k), test.attrs.get(k)
        if a != b:
            raise ProbeError(f"{train.path} and {test.path} were made differently ({k}: {a!r} vs "
                             f"{b!r}): extract both with the same model, pooling and settings")
