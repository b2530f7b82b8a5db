"""Process group setup for single-process and ``torchrun`` (DistributedDataParallel) training.

Under ``torchrun`` the environment carries ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; the process group
uses NCCL on GPU and gloo on CPU. Without them everything below degrades to a single process and the
collectives are no-ops, so the trainer has one code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from maskctrl.devices import resolve_device

__all__ = ["Processes", "resolve_device", "start", "stop"]


@dataclass(frozen=True)
class Processes:
    """Where this process stands in the run."""

    rank: int
    """Global rank (0 does all file I/O)."""
    world_size: int
    """Number of processes."""
    local_rank: int
    """Rank on this machine (selects the GPU)."""
    device: torch.device
    """The device this process trains on."""
    owns_group: bool = False
    """Whether :func:`start` created the process group (and :func:`stop` should destroy it)."""

    @property
    def distributed(self) -> bool:
        """Whether a process group is in use."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every process (no-op in a single process)."""
        if self.distributed:
            dist.barrier()

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over processes in place and return it (unchanged in a single process)."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor


def start(device: str) -> Processes:
    """Join the ``torchrun`` process group if the environment names one, and pick the device.

    A process group that the caller already initialized is used as it is (and left alone by :func:`stop`).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    owns_group = False
    if dist.is_available() and dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    elif world_size > 1:
        dist.init_process_group(backend="nccl" if resolved.type == "cuda" else "gloo")
        owns_group = True
    return Processes(rank, world_size, local_rank, resolved, owns_group)


def stop(processes: Processes) -> None:
    """Leave the process group if :func:`start` created it."""
    if processes.owns_group and dist.is_initialized():
        dist.destroy_process_group()
