"""SSA's learned router: the projections whose outputs the selector pools and searches.

Why a router of its own rather than the attention's q and k: routing must be *trained* by the routing
mechanism (``SSAConfig.routing``), and shown to be. Scores pooled from the attention's own q/k improve
as attention learns, with or without any routing gradient (measured: docs/ssa.md, routing ablation),
so there is no switch that turns routing learning off, and no way to tell what the mechanism adds.
With a router whose input is detached (as DeepSeek's DSA indexer does) its weights learn from the
routing gradient alone, and ``routing: none`` leaves them exactly as initialised.

Shapes: hidden [Bt, T, hidden] -> route_q [Bt, Hkv, T, d], route_k [Bt, Hkv, T, d] with d the head
dim: one routing query per kv head, since a selection is shared by the G query heads of the group.
No RoPE: a block summary is a mean over 64 positions, where rotary phases would mostly cancel; the
router matches content. Initialised from the attention's projections (``from_attention``): route_k
is k_proj, route_q the mean of the group's q_proj rows, so a converted pretrained model starts by
routing with its own (un-rotated) query-key affinities.
"""

from __future__ import annotations

import torch
from torch import nn

from ssa_kernels.selector import PooledRoute
from ssa_kernels.selector.reference import block_means, block_minmax

_LEAF_TOKENS = 1 << 16  # tokens projected at a time for leaf_bounds (8 x 128 router keys in bf16: 128 MiB a chunk)


class SSARouter(nn.Module):
    def __init__(self, hidden_size: int, kv_heads: int, head_dim: int, bias: bool = False):
        super().__init__()
        self.kv_heads, self.head_dim = kv_heads, head_dim
        self.q = nn.Linear(hidden_size, kv_heads * head_dim, bias=bias)
        self.k = nn.Linear(hidden_size, kv_heads * head_dim, bias=bias)

    @classmethod
    @torch.no_grad()
    def from_attention(cls, attn: nn.Module, kv_heads: int, head_dim: int) -> SSARouter:
        """A router initialised from an HF attention module's ``q_proj`` / ``k_proj`` (see module doc)."""
        q_w, k_w = attn.q_proj.weight, attn.k_proj.weight  # [Hq*d, hidden], [Hkv*d, hidden]
        hidden = q_w.shape[1]
        group = q_w.shape[0] // (kv_heads * head_dim)
        router = cls(hidden, kv_heads, head_dim, bias=attn.q_proj.bias is not None)
        router.to(device=q_w.device, dtype=q_w.dtype)
        # q_proj rows of kv head h's group are heads h*G .. h*G+G-1: [Hkv, G, d, hidden] -> mean over G
        router.q.weight.copy_(q_w.view(kv_heads, group, head_dim, hidden).mean(1).reshape(-1, hidden))
        router.k.weight.copy_(k_w)
        if router.q.bias is not None:
            router.q.bias.copy_(attn.q_proj.bias.view(kv_heads, group, head_dim).mean(1).reshape(-1))
            k_b = attn.k_proj.bias
            router.k.bias.copy_(k_b if k_b is not None else torch.zeros_like(router.k.bias))
        return router

    def pooled(
        self, hidden: torch.Tensor, block_size: int, leaf_bounds: bool = False, bounds_grad: bool = False
    ) -> PooledRoute:
        """The block means of :meth:`forward`'s outputs, made the cheap way round: the projections are
        affine, so the mean of the projected tokens is the projection of the mean token. The hidden
        states are pooled per block of ``block_size`` real tokens first ([Bt, nb, hidden], fp32 sums),
        then projected: 1/block_size of the router's FLOPs, and no [Bt, Hkv, T, d] routing tensor or
        gradient is ever made (at 1M tokens, 8 kv heads, d = 128, bf16: 2 x 2 GiB per layer).

        ``leaf_bounds`` (``attention.leaf_score=bound``): also each block's per-dimension min / max of the projected
        token keys (``PooledRoute.k_low`` / ``k_high``), which no mean can give: every token is projected, without
        gradient, ``_LEAF_TOKENS`` tokens at a time so that only the [Bt, Hkv, nb, d] results stay. ``bounds_grad``
        (``attention.distill_score=bound`` while training): with gradient instead, so the distillation loss reaches
        the keys at each block's extremes; autograd then keeps every chunk's [Bt, chunk, Hkv x d] keys."""
        x = hidden.detach()
        bt, t, _ = x.shape
        mean = block_means(x, block_size).to(x.dtype)  # (Bt, nb, hidden)
        nb = mean.shape[1]
        rq = self.q(mean).view(bt, nb, self.kv_heads, self.head_dim).transpose(1, 2)  # (Bt, Hkv, nb, d)
        rk = self.k(mean).view(bt, nb, self.kv_heads, self.head_dim).transpose(1, 2)
        if not leaf_bounds:
            return PooledRoute(rq, rk, t)
        step = max(1, _LEAF_TOKENS // block_size) * block_size  # whole blocks per chunk
        low, high = [], []
        with torch.set_grad_enabled(bounds_grad and torch.is_grad_enabled()):
            for s in range(0, t, step):
                keys = self.k(x[:, s : s + step]).view(bt, -1, self.kv_heads, self.head_dim).transpose(1, 2)
                lo_s, hi_s = block_minmax(keys, block_size)  # (Bt, Hkv, blocks of the chunk, d)
                low.append(lo_s)
                high.append(hi_s)
        return PooledRoute(rq, rk, t, torch.cat(low, 2), torch.cat(high, 2))

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden [Bt, T, hidden] (the attention's input) -> (route_q, route_k), each [Bt, Hkv, T, d].
        The input is detached: the routing gradient trains the router, never the backbone through it."""
        x = hidden.detach()
        bt, t, _ = x.shape
        rq = self.q(x).view(bt, t, self.kv_heads, self.head_dim).transpose(1, 2)  # (Bt, Hkv, T, d)
        rk = self.k(x).view(bt, t, self.kv_heads, self.head_dim).transpose(1, 2)  # (Bt, Hkv, T, d)
        return rq, rk
