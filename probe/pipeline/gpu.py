"""The fast path of extraction on a GPU: DataLoader workers, channels_last for conv
networks, and ``torch.compile`` (opt-in).  None of it changes what is computed, only how
fast; on the CPU most of it switches itself off.

Not yet run on a GPU: benchmarks/bench_gpu.py measures it and checks the GPU's features
against the CPU's (benchmarks/RESULTS.md says when it was last run).
"""
from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any, Iterator

from ..errors import ProbeError

if TYPE_CHECKING:
    import torch

    from ..extractors.base import Extractor

__all__ = ["compiled", "loader_options", "parse_num_workers", "resolve_num_workers",
           "use_channels_last"]

MAX_AUTO_WORKERS = 8


def parse_num_workers(num_workers: int | str | None) -> int | str:
    """``auto``, or an integer 0 or more; anything else is a one-line error."""
    if isinstance(num_workers, str) and num_workers.strip().lower() == "auto":
        return "auto"
    try:
        n = int(num_workers)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        n = -1
    if n < 0 or str(num_workers).strip() not in (str(n), f"{n}.0"):
        raise ProbeError(f"--num-workers must be auto or an integer 0 or more, not {num_workers}")
    return n


def resolve_num_workers(num_workers: int | str | None, device: torch.device) -> int:
    """``auto``: min(8, the CPU cores this process may use) on CUDA, so decoding keeps up
    with the GPU; 0 on the CPU, where workers would take cores from the forward pass.
    An integer: that many (0: load in the main process)."""
    n = parse_num_workers(num_workers)
    if n != "auto":
        return int(n)
    if device.type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    return min(MAX_AUTO_WORKERS, cores)


def loader_options(num_workers: int, device: torch.device) -> dict[str, Any]:
    """DataLoader keyword arguments: pinned host memory on CUDA (so the copy to the GPU
    can be asynchronous: the loop copies with ``non_blocking=True``), and with workers,
    persistent ones and 4 batches prefetched per worker (torch's default is 2) to smooth
    out slow JPEG decodes."""
    options: dict[str, Any] = {"num_workers": num_workers, "pin_memory": device.type == "cuda"}
    if num_workers > 0:
        options.update(persistent_workers=True, prefetch_factor=4)
    return options


def use_channels_last(model: Extractor, device: torch.device) -> bool:
    """Store a convolutional network's weights channels_last on CUDA (``prefers_channels_last``:
    ADM and SD U-Nets); the loop then passes inputs in the same layout.  cuDNN runs NHWC
    convolutions on tensor cores without transposes, which matters most in bf16/fp16.
    Returns whether it did."""
    import torch

    if device.type != "cuda" or not model.prefers_channels_last:
        return False
    model.net.to(memory_format=torch.channels_last)
    return True


def _innermost(modules: dict[str, Any]) -> list[Any]:
    """The blocks that contain no other block: compiling these leaves every hook and the
    early exit in eager code (a hook inside a compiled graph would recompile per batch)."""
    inner = []
    for m in modules.values():
        others = [o for o in modules.values() if o is not m]
        if not any(o is sub for sub in m.modules() for o in others):
            inner.append(m)
    return inner


@contextlib.contextmanager
def compiled(model: Extractor, enabled: bool) -> Iterator[None]:
    """Inside: each innermost block's ``forward`` compiled with ``torch.compile`` (the
    first batch pays the compile time, see docs/extract.md); on exit the eager forwards
    are back.  A compile failure becomes a one-line ProbeError."""
    if not enabled:
        yield
        return
    import torch

    blocks = _innermost(model._block_modules())
    saved = [(m, m.__dict__.get("forward")) for m in blocks]
    try:
        for m in blocks:
            m.forward = torch.compile(m.forward, dynamic=False)
        yield
    except Exception as e:
        if _is_compile_error(e):
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise ProbeError(f"--compile: torch.compile failed ({type(e).__name__}: {first}); "
                             "run without --compile") from e
        raise
    finally:
        for m, own in saved:
            if own is None:
                m.__dict__.pop("forward", None)
            else:
                m.forward = own


def _is_compile_error(e: BaseException) -> bool:
    module = type(e).__module__ or ""
    return module.startswith(("torch._dynamo", "torch._inductor")) or (
        "compile" in type(e).__name__.lower())
