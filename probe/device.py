"""Which device to run on and how many CPU threads to use: one answer for every command."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import ProbeError

if TYPE_CHECKING:
    import torch


def resolve_device(device: "str | torch.device | None" = None) -> "torch.device":
    """None or 'auto': CUDA when there is a GPU, else the CPU.  'cpu', 'cuda', 'cuda:N' or a
    torch.device: that device, checked to exist."""
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ProbeError(f"bad --device {device!r}: use cpu, cuda, cuda:N or auto") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ProbeError(f"--device {device} asked for but no CUDA device is available: "
                         "use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ProbeError(f"--device {device}: this machine has {torch.cuda.device_count()} "
                         "CUDA device(s), numbered from 0")
    return dev


def set_threads(threads: int | None) -> None:
    """Use ``threads`` CPU threads in torch (None: torch's default, one per core).  On a
    machine shared with other jobs, fewer threads than cores avoids threads waiting on
    each other."""
    if threads is None:
        return
    if int(threads) < 1:
        raise ProbeError(f"--threads must be a positive integer, not {threads}")
    import torch

    torch.set_num_threads(int(threads))
