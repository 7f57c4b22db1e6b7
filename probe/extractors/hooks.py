"""Forward hooks that capture block outputs and can end the forward pass early.

Early exit works by raising :class:`_StopForward` from the hook of the deepest
requested block; the caller catches it.  This needs no change to the network's
own ``forward`` and so works the same for every family.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn



class _StopForward(Exception):
    pass


@contextmanager
def capture(modules: Mapping[str, nn.Module], stop_after: str | None = None
            ) -> Iterator[dict[str, Any]]:
    """Record the output of each module in ``modules`` (a dict name -> nn.Module).

    Yields a dict that fills with ``name -> output tensor`` as the forward pass runs.
    If ``stop_after`` names one of the modules, the forward pass is ended right after
    that module runs; wrap the call in :func:`run_until_stop`.
    Hooks are removed on exit, also when the forward pass raises.
    """
    outputs: dict[str, Any] = {}
    handles = []

    def make_hook(name):
        def hook(module, args, output):
            if isinstance(output, (tuple, list)):
                output = output[0]
            outputs[name] = output
            if name == stop_after:
                raise _StopForward()

        return hook

    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(make_hook(name)))
        yield outputs
    finally:
        for h in handles:
            h.remove()


def run_until_stop(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; return its result, or None if a capture hook stopped it early."""
    try:
        return fn(*args, **kwargs)
    except _StopForward:
        return None


__all__ = ["capture", "run_until_stop"]
