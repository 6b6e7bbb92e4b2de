"""Rung ``single``: one process, the model as built."""

from __future__ import annotations

from torch import nn

from parallel.dims import ParallelDims, ParallelError


def apply_single(model: nn.Module, dims: ParallelDims) -> nn.Module:
    if dims.world > 1:
        raise ParallelError(f"launched with {dims.world} processes but parallel=single: use parallel=ddp")
    return model
