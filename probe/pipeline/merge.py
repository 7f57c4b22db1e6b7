"""Merging the parts of a finished run into the HDF5 file ``OUT`` (see :mod:`probe.store`).

The parts are streamed one at a time into a temporary file next to ``OUT``, which is marked
complete and renamed into place: ``OUT`` appears whole or not at all.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import files, store
from ..errors import ProbeError
from ..data.segmentation import copy_masks, has_masks
from .loop import DTYPES

if TYPE_CHECKING:
    from ..selection import Key
    from .workdir import Workdir


def assemble(out: str, work: Workdir, data: Any, n_total: int, keys: Sequence[Key], dtype: str,
             attrs: dict[str, Any]) -> None:
    """Write the parts of ``work`` (which must cover all ``n_total`` images) to ``out``,
    then remove ``work``."""
    parts = work.part_files()
    good, skipped, shapes = _survey(parts, keys)
    if len(good) + len(skipped) != n_total or len(np.unique(good)) != len(good):
        raise ProbeError(f"{work.path} does not cover all {n_total} images: re-run the same "
                         "command to finish the missing ones")
    if shapes is None:
        raise ProbeError("every image was skipped as unreadable: nothing to write")
    labels = np.asarray(data.labels)[good]
    ids = [data.ids[i] for i in good]
    attrs = dict(attrs, num_skipped=int(len(skipped)))
    try:
        with files.atomic_path(out) as tmp, store.create(
                tmp, num_samples=len(good), shapes=shapes, dtype=DTYPES[dtype], labels=labels,
                ids=ids, class_names=data.class_names, attrs=attrs) as f:
            f.create_dataset("skipped_ids", data=np.asarray([data.ids[i] for i in skipped],
                                                             dtype=object), dtype=store._STR)
            _copy_parts(parts, good, [f[f"features/{store.key_name(*k)}"] for k in keys])
            if has_masks(data):  # like labels: read from the dataset for the rows kept
                copy_masks(f, data, good)
            store.mark_complete(f)
    except OSError as e:
        raise ProbeError(f"cannot write {out}: {e} — free disk space or fix permissions, then "
                         "re-run the same command (finished parts are kept)") from e
    work.remove()


def _survey(parts, keys):
    """The sorted dataset indices done and skipped in ``parts``, and the feature shape of
    each key (None if every image was skipped)."""
    index: list[np.ndarray] = []
    skipped: Any = []  # the parts' arrays, then their sorted union
    shapes = None
    for p in parts:
        with np.load(p) as z:
            index.append(z["index"])
            skipped.append(z["skipped"])
            if shapes is None and len(z["index"]):
                shapes = {k: z[f"k{j}"].shape[1:] for j, k in enumerate(keys)}
    good = np.sort(np.concatenate(index)) if index else np.zeros(0, np.int64)
    skipped = np.sort(np.concatenate(skipped)) if skipped else np.zeros(0, np.int64)
    return good, skipped, shapes


def _copy_parts(parts, good, dsets):
    """Copy each part's features into the rows of ``dsets`` (one per key) that hold its
    images, ``good`` being the sorted dataset indices of all rows."""
    for p in parts:
        with np.load(p) as z:
            if not len(z["index"]):
                continue
            rows = np.searchsorted(good, z["index"])
            sel = (slice(int(rows[0]), int(rows[-1]) + 1)
                   if rows[-1] - rows[0] + 1 == len(rows) else rows)
            for j, ds in enumerate(dsets):
                ds[sel] = z[f"k{j}"]


def summary(out: str, n: int, elapsed: float, log: Callable[[str], Any], world: int = 1) -> None:
    """Log what ``out`` holds.  ``n``: images extracted by this session (a resumed run did
    the rest before)."""
    with store.open_features(out) as f:
        size = os.path.getsize(out)
        log(f"wrote {out} ({size / 2**20:.1f} MiB): {len(f)} images"
            + (f", {f.attrs.get('num_skipped')} skipped" if f.attrs.get("num_skipped") else "")
            + f" in {elapsed:.1f} s ({n / max(elapsed, 1e-9):.1f} img/s"
            + (f" on {world} ranks)" if world > 1 else ")"))
        for key in f.keys:
            where = f"{key[1]:<30}" if key[0] is None else f"t={key[0]:<5} {key[1]:<24}"
            log(f"  {where} {tuple(f.dataset(key).shape)} {f.dataset(key).dtype}")
