"""torch.distributed, only as much as aimri needs: who am I, how many are we, wait for all.

Works unchanged in a single process (rank 0 of 1). Under `torchrun` the process group is
started on first use: NCCL when each rank has a GPU, gloo otherwise.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import torch.distributed as dist


class World(NamedTuple):
    rank: int
    size: int
    local_rank: int


def world() -> World:
    """This process's place; starts the process group under torchrun if needed."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    if dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return World(0, 1, 0)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def device_for_rank(requested: str) -> str:
    """With several ranks on a GPU machine, `auto` means this rank's own GPU."""
    w = world()
    if requested == "auto" and w.size > 1 and torch.cuda.is_available():
        return f"cuda:{w.local_rank}"
    return requested


def shutdown() -> None:
    """End the process group (torchrun jobs), so that ranks exit cleanly."""
    if dist.is_initialized():
        dist.destroy_process_group()
