"""One explicit description of how the job is spread over processes, passed around (no globals)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


class ParallelError(ValueError):
    """A parallel layout that cannot work; the message names the key to change."""


@dataclass(frozen=True)
class ParallelDims:
    world: int  # processes in the job
    rank: int
    local_rank: int
    dp: int  # data-parallel degree (== world until sequence-parallel rungs arrive)
    nnodes: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def init_distributed(device: str = "auto", backend: str = "auto") -> ParallelDims:
    """Join the process group that torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, ...), or run
    as one process when launched without it. NCCL on GPU, gloo on CPU unless ``backend`` says."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        backend = ("nccl" if use_cuda else "gloo") if backend == "auto" else backend
        dist.init_process_group(backend=backend, device_id=dev if backend == "nccl" else None)
    return ParallelDims(world, rank, local_rank, dp=world, nnodes=max(1, world // max(1, local_world)), device=dev)


def destroy_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
