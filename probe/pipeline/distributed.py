"""Joining a torch.distributed job started by torchrun or `accelerate launch`.

Both launchers set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; that is
all ``init_process_group`` needs.  gloo on CPU, nccl on GPU.  Each rank then extracts
its shard of the dataset, and rank 0 merges the parts into one file.
"""
import datetime
import os

import torch

from ..device import resolve_device


def launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str | torch.device | None = None) -> str | torch.device | None:
    """Join the process group if a launcher started us; return this rank's device."""
    if not launched():
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    # Only the device type is the user's choice: each rank takes the GPU of its local rank.
    use_cuda = resolve_device(device).type == "cuda"
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    else:
        device = "cpu"
    if not torch.distributed.is_initialized():
        # Rank 0 merges the parts while the others wait: allow hours, not the 30 min default.
        torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo",
                                             timeout=datetime.timedelta(hours=12))
    return device


def teardown() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
