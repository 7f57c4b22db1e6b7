"""The extraction pipeline: images -> noise -> network -> hooks -> pooling -> one HDF5 file.

``run.py`` holds :func:`extract` (a run folder per output, resumable parts, one merge at the
end), ``workdir.py`` the run folder and its lock, ``loop.py`` the batches, ``noise.py`` the
per-sample noise, ``pooling.py`` the pooling of block outputs, ``merge.py`` the final file
and ``distributed.py`` the ranks.  The file format itself is :mod:`probe.store`.

``extract`` is imported on first use, so the CLI can read ``pooling``'s help without torch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .run import extract, weights_sha256

__all__ = ["extract", "weights_sha256"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import run

        return getattr(run, name)
    raise AttributeError(f"module 'probe.pipeline' has no attribute {name!r}")
