"""Which device to run on and how many CPU threads to use: one answer for every command."""
from __future__ import annotations

import os
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
    """How torch uses the CPU cores: ``threads`` intra-op threads (None: torch's default,
    one per core), waiting passively for each other unless ``OMP_WAIT_POLICY`` says otherwise.

    OpenMP threads spin while they wait for each other.  When another process holds a
    core, a spinning thread burns the time slice the thread it waits for needs, and small
    ops run 5-25x slower instead of 2x (benchmarks/RESULTS.md, "Shared cores").  Waiting
    passively removes that and costs nothing measurable on idle cores.  OpenMP reads the
    policy when torch is imported, so this takes effect only if torch is not imported yet
    (the `probe` command calls it first thing)."""
    if threads is not None and int(threads) < 1:
        raise ProbeError(f"--threads must be a positive integer, not {threads}")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if threads is None:
        return
    import torch

    torch.set_num_threads(int(threads))
