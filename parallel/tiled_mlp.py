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


class SequenceTiled(torch.autograd.Function):
    """``fn(*inputs)`` over tiles of ``tile`` tokens (dim 1 of every input and output), keeping only the inputs.

    ``fn`` works per token (tile by tile equals all at once) and returns a tensor or a tuple of them; ``params``
    are the weights it reads, passed again after the inputs so that each gets one gradient event. The backward
    recomputes one tile at a time under the forward's autocast state and sums the parameter gradients over
    the tiles. Inputs that do not require grad (rotary cos / sin) get none."""

    @staticmethod
    def forward(ctx, fn, params: list[torch.Tensor], tile: int, n_inputs: int, *flat: torch.Tensor):
        inputs = flat[:n_inputs]
        ctx.fn, ctx.params, ctx.tile = fn, params, tile
        dev = inputs[0].device.type
        ctx.autocast = (dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))
        ctx.save_for_backward(*inputs)
        n, outs = inputs[0].shape[1], None
        with torch.no_grad():
            for s in range(0, n, tile):
                res = fn(*(x[:, s : s + tile] for x in inputs))
                ctx.single = isinstance(res, torch.Tensor)
                res = (res,) if ctx.single else res
                if outs is None:  # written in place: no list of tiles beside a concatenated copy
                    outs = [r.new_empty((r.shape[0], n, *r.shape[2:])) for r in res]
                for out, r in zip(outs, res, strict=True):
                    out[:, s : s + tile] = r
        return outs[0] if ctx.single else tuple(outs)

    @staticmethod
    def backward(ctx, *grad_outs: torch.Tensor):
        inputs = ctx.saved_tensors
        fn, params, tile = ctx.fn, ctx.params, ctx.tile
        dev, enabled, dtype = ctx.autocast
        dins = [torch.empty_like(x) if x.requires_grad else None for x in inputs]
        dparams: list[torch.Tensor | None] = [None] * len(params)
        for s in range(0, inputs[0].shape[1], tile):
            xs = [x[:, s : s + tile].detach().requires_grad_(x.requires_grad) for x in inputs]
            with torch.enable_grad(), torch.autocast(dev, dtype=dtype, enabled=enabled):
                res = fn(*xs)
            res = (res,) if isinstance(res, torch.Tensor) else res
            pairs = [(r, g[:, s : s + tile]) for r, g in zip(res, grad_outs, strict=True) if g is not None]
            wrt = [x for x in xs if x.requires_grad] + params
            grads = list(torch.autograd.grad([r for r, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True))
            for d in dins:
                if d is not None:
                    g = grads.pop(0)
                    d[:, s : s + tile] = 0 if g is None else g
            for i, g in enumerate(
                grads
            ):  # summed over the tiles in fp32 (bf16 weights under DeepSpeed: 64 tiles at 1M)
                if g is not None:
                    wide = torch.promote_types(g.dtype, torch.float32)
                    dparams[i] = g.to(wide) if dparams[i] is None else dparams[i].add_(g)
        dparams = [None if g is None else g.to(p.dtype) for g, p in zip(dparams, params, strict=True)]
        return (None, None, None, None, *dins, *dparams)


def sequence_tiled(fn, params: list[torch.Tensor], tile: int, *inputs: torch.Tensor):
    """:class:`SequenceTiled` applied: ``fn(*inputs)`` tile by tile, its intermediates never kept."""
    return SequenceTiled.apply(fn, params, tile, len(inputs), *inputs, *params)


def tiled_forward(mlp: nn.Module, fn, tile: int, x: torch.Tensor) -> torch.Tensor:
    """``fn(x)`` (the MLP's own forward, [B, T, H] -> [B, T, H], per token) over tiles of ``tile`` tokens."""
    if not torch.is_grad_enabled() or x.shape[1] <= tile:
        return fn(x)
    return sequence_tiled(fn, [p for p in mlp.parameters() if p.requires_grad], tile, x)


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
