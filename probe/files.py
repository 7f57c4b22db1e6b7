"""Writing files so that a reader never sees half of one.

Every file the package writes goes through :func:`atomic_write`: the content is written
to a temporary name in the same folder and renamed over the target, which POSIX makes
atomic.  A run killed halfway leaves the old file (or none), never a torn one.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
from typing import IO, Any, Iterator


_TEMP = re.compile(r"\.(?P<base>.+)\.tmp-(?P<pid>\d+)(?P<ext>.*)")


def temp_name(path: str | os.PathLike) -> str:
    """A hidden temporary name next to ``path`` (same folder, so the rename is atomic),
    keeping the extension for writers that go by it (matplotlib, h5py)."""
    path = os.fspath(path)
    folder, base = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{base}.tmp-{os.getpid()}{os.path.splitext(base)[1]}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, fsync: bool = False) -> Iterator[str]:
    """Yield a temporary path to write ``path`` through; it is renamed over ``path`` when
    the block ends without error and removed otherwise."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", *, fsync: bool = False,
                 newline: str | None = None) -> Iterator[IO[Any]]:
    """``open(path, mode)`` that lands all at once (see :func:`atomic_path`)."""
    with atomic_path(path, fsync=fsync) as tmp, open(tmp, mode, newline=newline) as fh:
        yield fh


def atomic_json(obj: Any, path: str | os.PathLike) -> str:
    """Write ``obj`` as indented JSON (with a final newline), atomically."""
    with atomic_write(path) as fh:
        json.dump(obj, fh, indent=1)
        fh.write("\n")
    return os.fspath(path)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> str:
    """``torch.save`` atomically, synced to disk (checkpoints must survive a power cut)."""
    import torch

    with atomic_write(path, "wb", fsync=True) as fh:
        torch.save(obj, fh)
    return os.fspath(path)


def remove_stale_temps(folder: str | os.PathLike, target: str | os.PathLike | None = None) -> list[str]:
    """Remove the temporary files (see :func:`temp_name`) in ``folder`` whose writer process
    is gone: what a run killed mid-write leaves behind.  ``target``: only those of that file.
    Returns the paths removed."""
    folder = os.fspath(folder)
    base = None if target is None else os.path.basename(os.fspath(target))
    removed = []
    for name in os.listdir(folder):
        m = _TEMP.fullmatch(name)
        if not m or m["ext"] != os.path.splitext(m["base"])[1] or base not in (None, m["base"]):
            continue
        try:
            os.kill(int(m["pid"]), 0)
        except ProcessLookupError:
            path = os.path.join(folder, name)
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
                removed.append(path)
        except PermissionError:
            pass  # alive, another user's
    return removed
