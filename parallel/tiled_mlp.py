"""Tiled MLP (a piece of the ``nested_offload`` rung, usable with any rung: ``parallel.tiled_mlp``).

A decoder layer's MLP holds ``~9 I`` bytes per token of intermediates (gate, up, activation and their
product in bf16; ``parallel/plan.py``), which at long sequence lengths is the largest part of the one
layer that activation checkpointing recomputes. ``TiledMLP`` runs the MLP over tiles of ``tile``
tokens without keeping them. Its backward recomputes one tile at a time and sums the parameter
gradients over the tiles, so the peak is one tile's intermediates.

The parameters are explicit inputs of the autograd.Function, so each gets its gradient once per
backward. DDP's reducer and any gradient hook then see one ready event per parameter, as without
tiling. Calling ``torch.autograd.backward`` per tile would fire AccumulateGrad once per tile, which
DDP refuses. Written here because neither torch nor transformers has it. ALST (Arctic Long Sequence
Training) does the same in DeepSpeed, where ZeRO-3's gathered parameters need extra care.

The backward's recomputation runs under the autocast state of the forward (autograd runs backward
outside any ``torch.autocast`` block). Without it the recomputed MLP ran in fp32: on an H100 the 1B
model's step at 128K went from 6.9 s to 19.0 s with 16K-token tiles.
"""

from __future__ import annotations

import functools

import torch
from torch import nn


class _TiledMLPFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fn, params: list[torch.Tensor], tile: int, x: torch.Tensor, *flat: torch.Tensor) -> torch.Tensor:
        ctx.fn, ctx.params, ctx.tile = fn, params, tile
        dev = x.device.type
        ctx.autocast = (dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))
        ctx.save_for_backward(x)
        with torch.no_grad():
            return torch.cat([fn(x[:, s : s + tile]) for s in range(0, x.shape[1], tile)], dim=1)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (x,) = ctx.saved_tensors
        fn, params, tile = ctx.fn, ctx.params, ctx.tile
        dev, enabled, dtype = ctx.autocast
        dx = torch.empty_like(x) if x.requires_grad else None
        dparams: list[torch.Tensor | None] = [None] * len(params)
        for s in range(0, x.shape[1], tile):
            xt = x[:, s : s + tile].detach().requires_grad_(x.requires_grad)
            with torch.enable_grad(), torch.autocast(dev, dtype=dtype, enabled=enabled):
                out = fn(xt)
            inputs = ([xt] if dx is not None else []) + params
            grads = list(torch.autograd.grad(out, inputs, grad_out[:, s : s + tile]))
            if dx is not None:
                dx[:, s : s + tile] = grads.pop(0)
            dparams = [g if acc is None else acc + g for acc, g in zip(dparams, grads, strict=True)]
        return (None, None, None, dx, *dparams)


def tiled_forward(mlp: nn.Module, fn, tile: int, x: torch.Tensor) -> torch.Tensor:
    """``fn(x)`` (the MLP's own forward, [B, T, H] -> [B, T, H], per token) over tiles of ``tile`` tokens."""
    if not torch.is_grad_enabled() or x.shape[1] <= tile:
        return fn(x)
    params = [p for p in mlp.parameters() if p.requires_grad]
    return _TiledMLPFunction.apply(fn, params, tile, x, *params)


def apply_tiled_mlp(decoder_layers: nn.ModuleList, tile: int) -> None:
    """Run every layer's ``mlp`` over tiles of ``tile`` tokens, in place. The module's forward is
    replaced and the module itself is kept, so parameter names, state dicts and checkpoints stay
    unchanged."""
    if tile < 1:
        raise ValueError(f"parallel.tiled_mlp={tile}: tokens per tile must be >= 1 (0 turns tiling off)")
    for layer in decoder_layers:
        mlp = layer.mlp
        if getattr(mlp, "tiled_mlp_tokens", None) is None:
            mlp.forward = functools.partial(tiled_forward, mlp, mlp.forward, tile)
            mlp.tiled_mlp_tokens = tile
