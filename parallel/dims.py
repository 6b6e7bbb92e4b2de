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
    dp: int  # data-parallel degree: world // (sp x cp)
    nnodes: int
    device: torch.device
    sp: int = 1  # Ulysses degree; an SP group is ``sp`` consecutive ranks (one node's GPUs)
    sp_group: Any = None  # this rank's SP process group (None when sp == 1)
    cp: int = 1  # ring (context-parallel) degree; a CP group is ``cp`` ranks ``sp`` apart (across nodes)
    cp_group: Any = None  # this rank's ring process group (None when cp == 1)
    local_world: int = 1  # processes on each node (torchrun's LOCAL_WORLD_SIZE)

    # Rank layout, innermost first: rank = (dp_rank x cp + cp_rank) x sp + sp_rank. The sp x cp ranks of
    # one data-parallel replica read the same rows and each holds one sequence shard of them.

    @property
    def seq_shards(self) -> int:
        """Ranks that share each row (sp x cp), each holding a shard of it."""
        return self.sp * self.cp

    @property
    def dp_rank(self) -> int:
        """Index of this rank's replica (its sp x cp ranks read the same rows)."""
        return self.rank // self.seq_shards

    @property
    def sp_rank(self) -> int:
        """Which Ulysses shard of its ring shard this rank holds."""
        return self.rank % self.sp

    @property
    def cp_rank(self) -> int:
        """Which ring (zigzag) shard of its replica's rows this rank holds."""
        return self.rank // self.sp % self.cp

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def init_distributed(device: str = "auto", backend: str = "auto", sp: int = 1, cp: int = 1) -> ParallelDims:
    """Join the process group that torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, ...), or run
    as one process when launched without it. NCCL on GPU, gloo on CPU unless ``backend`` says.
    ``sp`` > 1 splits the world into SP groups of ``sp`` consecutive ranks (``sp`` = 0: all the job's
    processes, over ``cp``); ``cp`` > 1 into ring groups of ``cp`` ranks ``sp`` apart (dp = world // (sp x cp);
    see ``ParallelDims`` for the layout). Whether an SP group may span nodes is the rung's to check
    (:func:`require_sp_within_node`)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if sp == 0:  # the whole job (parallel=multinode's default)
        sp = world // cp if cp >= 1 and world % cp == 0 else world
    if sp < 1 or world % sp:
        divisors = [d for d in range(1, world + 1) if world % d == 0]
        raise ParallelError(f"parallel.sp={sp} must divide the {world} processes of the job: use one of {divisors}")
    if cp < 1 or world % (sp * cp):
        divisors = [d for d in range(1, world // sp + 1) if world // sp % d == 0] if world % sp == 0 else [1]
        raise ParallelError(
            f"parallel.cp={cp} x parallel.sp={sp} must divide the {world} processes of the job: use parallel.cp in "
            f"{divisors}"
        )
    if world > 1 and not dist.is_initialized():
        backend = ("nccl" if use_cuda else "gloo") if backend == "auto" else backend
        dist.init_process_group(backend=backend, device_id=dev if backend == "nccl" else None)
    sp_group = cp_group = None
    # Every rank creates every group in the same order (new_group is collective) and keeps its own.
    if sp > 1:
        for first in range(0, world, sp):
            group = dist.new_group(list(range(first, first + sp)))
            if first <= rank < first + sp:
                sp_group = group
    if cp > 1:
        for first in range(0, world, sp * cp):  # one replica's sp x cp ranks
            for s in range(sp):
                members = [first + c * sp + s for c in range(cp)]
                group = dist.new_group(members)
                if rank in members:
                    cp_group = group
    nnodes = max(1, world // max(1, local_world))
    return ParallelDims(
        world, rank, local_rank, dp=world // (sp * cp), nnodes=nnodes, device=dev, sp=sp, sp_group=sp_group, cp=cp,
        cp_group=cp_group, local_world=local_world,
    )  # fmt: skip


def require_sp_within_node(dims: ParallelDims, rung: str) -> None:
    """Rungs whose Ulysses all-to-alls stay on one node's fast links (ulysses, offload, ring's hybrid)
    refuse an SP group larger than a node; ``parallel=multinode`` is the one that spans nodes."""
    if dims.sp > dims.local_world:
        raise ParallelError(
            f"parallel.sp={dims.sp} is more than the {dims.local_world} processes of a node: under parallel={rung} "
            f"Ulysses all-to-alls are intra-node, use parallel.sp<={dims.local_world}, or parallel=multinode "
            f"(sequence parallelism across nodes) or parallel=ring parallel.cp=<nodes> (ulysses x ring)"
        )


def destroy_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
