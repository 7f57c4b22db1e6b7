"""The run folder ``OUT.partial/`` of an unfinished extraction, and whether to start, resume
or refuse.

It holds ``settings.json`` (what is being computed), one ``lock.RANK`` per process writing,
and ``parts/*.npz``, one file per batch.  Every file lands whole (see :mod:`probe.files`), so
a killed run leaves only whole parts, which a re-run of the same command skips.
"""
from __future__ import annotations

import fcntl
import glob
import io
import json
import os
import shutil
from typing import IO, Any, Sequence

import numpy as np

from .. import files, store
from ..errors import ProbeError
from .settings import FeatureSettings


class Workdir:
    """The OUT.partial folder: settings, lock and parts of an unfinished run."""

    def __init__(self, out: str) -> None:
        self.path = f"{out}.partial"
        self.parts = os.path.join(self.path, "parts")
        self.settings_file = os.path.join(self.path, "settings.json")
        self._lock: IO[str] | None = None

    def exists(self) -> bool:
        return os.path.isdir(self.path)

    def settings(self) -> FeatureSettings | None:
        """The settings of the run in this folder (None if unreadable)."""
        try:
            with open(self.settings_file) as fh:
                return FeatureSettings.from_dict(json.load(fh))
        except (OSError, ValueError):
            return None

    def start(self, settings: FeatureSettings, rank: int = 0) -> None:
        try:
            os.makedirs(self.parts, exist_ok=True)
        except OSError as e:  # e.g. a folder the kernel owns (/proc, /sys) or a read-only mount
            raise ProbeError(f"cannot create {self.path} ({e.strerror}): choose another --out "
                             "in a folder you can write to") from None
        if rank == 0 and self.settings() != settings:  # new, or resumed with --skip-bad
            write_bytes(self.settings_file,
                        json.dumps(settings.as_dict(), indent=1, sort_keys=True).encode())
        self._lock = try_lock(os.path.join(self.path, f"lock.{rank}"))
        if self._lock is None:
            raise another_writer(self.path[:-len(".partial")])

    def busy(self) -> bool:
        """Whether a live `probe extract` holds one of this run's locks (a dead one's lock is
        released by the kernel, so a killed run is never mistaken for a live one)."""
        for path in glob.glob(os.path.join(self.path, "lock.*")):
            fh = try_lock(path)
            if fh is None:
                return True
            fh.close()
        return False

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def part_files(self) -> list[str]:
        # a part being written has a hidden temporary name, which glob's * does not match
        return sorted(glob.glob(os.path.join(self.parts, "*.npz")))

    def done_indices(self) -> np.ndarray:
        done = []
        for p in self.part_files():
            with np.load(p) as z:
                done.append(z["index"])
                done.append(z["skipped"])
        return np.concatenate(done) if done else np.zeros(0, np.int64)

    def write_part(self, index: np.ndarray, skipped: Sequence[int],
                   arrays: Sequence[np.ndarray]) -> None:
        first = int(index[0]) if len(index) else int(skipped[0])
        path = os.path.join(self.parts, f"{first:010d}.npz")
        buf = io.BytesIO()
        named: dict[str, Any] = {f"k{j}": a for j, a in enumerate(arrays)}
        np.savez(buf, index=index, skipped=np.asarray(skipped, np.int64), **named)
        write_bytes(path, buf.getvalue())

    def remove(self) -> None:
        self.release()
        shutil.rmtree(self.path, ignore_errors=True)


def try_lock(path: str) -> IO[str] | None:
    """The open lock file, held exclusively, or None if another process holds it."""
    fh = open(path, "a")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        return None
    return fh


def another_writer(out: str) -> ProbeError:
    return ProbeError(f"another `probe extract` is writing {out} right now: wait for it to "
                      "finish, or choose another --out")


def write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and synced to disk (a part must survive a crash
    right after the run moved on from it)."""
    try:
        with files.atomic_write(path, "wb", fsync=True) as fh:
            fh.write(data)
    except OSError as e:
        raise ProbeError(f"cannot write {path}: {e.strerror or e} — free disk space or fix "
                         "permissions, then re-run the same command to resume") from e


def complete_settings(out: str) -> FeatureSettings | None:
    """Settings of a complete feature file at ``out``, or None if it is not one.  They are
    read from the root attributes, which files of every version hold."""
    import h5py

    try:
        with h5py.File(out, "r") as f:
            if f.attrs.get("format") == store.FORMAT and bool(f.attrs.get("complete", False)):
                return FeatureSettings.from_attrs(f.attrs)
    except (OSError, ValueError):
        pass
    return None


def check_out(out: str, settings: FeatureSettings, overwrite: bool, work: Workdir) -> str:
    """'new', 'resume' or 'complete' for a run of ``settings`` writing ``out``, or a
    ProbeError saying why it may not run."""
    d = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(d):
        raise ProbeError(f"output folder {d} does not exist: create it or choose another --out")
    if not os.access(d, os.W_OK):
        raise ProbeError(f"output folder {d} is not writable: choose another --out")
    if work.busy():  # checked before --overwrite deletes anything of a live run
        raise another_writer(out)
    files.remove_stale_temps(d, out)  # a merge killed halfway
    if overwrite:
        if os.path.exists(out):
            os.remove(out)
        work.remove()
        return "new"
    if os.path.exists(out):
        done = complete_settings(out)
        if done == settings:
            work.remove()  # a run killed between rename and clean-up
            return "complete"
        raise ProbeError(f"{out} exists and was made by a different command: pass --overwrite "
                         "to replace it, or choose another --out")
    if work.exists():
        old = work.settings()
        if old is not None and not old.skip_bad and settings.skip_bad:
            # the advice given when a bad image stops a run: its parts hold no bad image, so
            # they stay valid with --skip-bad turned on
            old = old.replace(skip_bad=True)
        if old is not None and old != settings:
            a, b = old.as_dict(), settings.as_dict()
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise ProbeError(f"{work.path} holds an unfinished run with different settings "
                             f"({', '.join(diff)}): re-run that command to finish it, or pass "
                             "--overwrite to start over")
        return "resume"
    return "new"
