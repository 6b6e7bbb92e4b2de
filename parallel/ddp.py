"""Rung ``ddp``: data parallelism with torch DistributedDataParallel (NCCL on GPU, gloo on CPU)."""

from __future__ import annotations

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from parallel.dims import ParallelDims


def apply_ddp(model: nn.Module, dims: ParallelDims) -> nn.Module:
    if not dims.distributed:
        return model  # one process: nothing to synchronise
    ids = [dims.device.index] if dims.device.type == "cuda" else None
    # bucket_view avoids a copy of each gradient into the communication buckets.
    return DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True)
