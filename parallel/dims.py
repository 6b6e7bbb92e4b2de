"""One explicit description of how the job is spread over processes, passed around (no globals)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


class ParallelError(ValueError):
    """A parallel layout that cannot work; the message names the key to change."""


@dataclass(frozen=True)
class ParallelDims:
    world: int  # processes in the job
    rank: int
    local_rank: int
    dp: int  # data-parallel degree: world // sp
    nnodes: int
    device: torch.device
    sp: int = 1  # sequence-parallel degree; an SP group is ``sp`` consecutive ranks (one node's GPUs)
    sp_group: Any = None  # this rank's SP process group (None when sp == 1)

    @property
    def dp_rank(self) -> int:
        """Index of this rank's SP group: the ranks of one group read the same rows."""
        return self.rank // self.sp

    @property
    def sp_rank(self) -> int:
        """Which sequence shard of its group's rows this rank holds."""
        return self.rank % self.sp

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def init_distributed(device: str = "auto", backend: str = "auto", sp: int = 1) -> ParallelDims:
    """Join the process group that torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, ...), or run
    as one process when launched without it. NCCL on GPU, gloo on CPU unless ``backend`` says.
    ``sp`` > 1 splits the world into SP groups of ``sp`` consecutive ranks (dp = world // sp)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if sp < 1 or world % sp:
        divisors = [d for d in range(1, world + 1) if world % d == 0]
        raise ParallelError(f"parallel.sp={sp} must divide the {world} processes of the job: use one of {divisors}")
    if sp > local_world:
        raise ParallelError(
            f"parallel.sp={sp} is more than the {local_world} processes of a node: Ulysses all-to-alls are "
            f"intra-node, use parallel.sp<={local_world}"
        )
    if world > 1 and not dist.is_initialized():
        backend = ("nccl" if use_cuda else "gloo") if backend == "auto" else backend
        dist.init_process_group(backend=backend, device_id=dev if backend == "nccl" else None)
    sp_group = None
    if sp > 1:  # every rank creates every group (new_group is collective), keeps its own
        for first in range(0, world, sp):
            group = dist.new_group(list(range(first, first + sp)))
            if first <= rank < first + sp:
                sp_group = group
    nnodes = max(1, world // max(1, local_world))
    return ParallelDims(world, rank, local_rank, dp=world // sp, nnodes=nnodes, device=dev, sp=sp, sp_group=sp_group)


def destroy_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
