"""Rung ``ulysses``: intra-node sequence parallelism (DeepSpeed-Ulysses) around the attention function.

Each rank of an SP group (``parallel.sp`` consecutive ranks) holds ``T/sp`` tokens of every row of
its group. Everything but attention is per token, so only attention needs the whole sequence: the
wrapper registered as HF attention implementation ``"ulysses"`` turns q/k/v from
``[B, H, T/sp, D]`` (a sequence shard, all heads) into ``[B, H/sp, T, D]`` (all tokens, a head shard)
with one all-to-all each, runs the model's own attention (SDPA / eager / flash, or SSA) on its
heads, and all-to-alls the output back. SSA's learned router pools and projects each rank's own
shard per block, and its block means take the same all-to-all as k (``_gathered_route``). KV heads are repeated when ``sp`` does not divide them
(SSA's attention router then takes each copy's block-mean query over all of the original's query heads
before the all-to-all, ``group_query_means``, so a copy selects what the original would). The positions are all-gathered, so the inner attention sees the documents of the whole
packed row (SSA and HF derive document ids from positions).

``SequenceSharded`` pads each row to a multiple of ``sp`` (x ``block_size`` for SSA) and keeps this
rank's shard of input_ids / labels / position_ids (labels are already shifted by the loader, so no
label crosses a shard). The whole world is one DDP group: gradients are summed over dp x sp.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface

from parallel.ddp import apply_ddp
from parallel.dims import ParallelDims, ParallelError, require_sp_within_node
from ssa_kernels.hf import _attention_modules, doc_ids_from_positions, ssa_attention_forward, ssa_config_of
from ssa_kernels.selector import PooledRoute
from ssa_kernels.selector.reference import block_means, query_summary

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
INNER = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "ssa")


def _seq_to_heads(x: torch.Tensor, group, sp: int) -> torch.Tensor:
    # (B, H, T/sp, D) -> (sp, B, H/sp, T/sp, D): chunk j of the heads goes to rank j
    b, h, t, d = x.shape
    send = x.reshape(b, sp, h // sp, t, d).transpose(0, 1).contiguous()
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)  # recv[i]: rank i's sequence shard of my heads
    # (sp, B, H/sp, T/sp, D) -> (B, H/sp, T, D), shards in rank order
    return recv.permute(1, 2, 0, 3, 4).reshape(b, h // sp, sp * t, d)


def _heads_to_seq(x: torch.Tensor, group, sp: int) -> torch.Tensor:
    # (B, H/sp, T, D) -> (sp, B, H/sp, T/sp, D): sequence shard j goes to rank j
    b, h, t, d = x.shape
    send = x.reshape(b, h, sp, t // sp, d).permute(2, 0, 1, 3, 4).contiguous()
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)  # recv[i]: my sequence shard of rank i's heads
    # (sp, B, H/sp, T/sp, D) -> (B, H, T/sp, D)
    return recv.transpose(0, 1).reshape(b, sp * h, t // sp, d)


class _AllToAll(torch.autograd.Function):
    """Differentiable all-to-all; the backward of one direction is the other. Written here because
    ``torch.distributed.nn.functional.all_to_all`` is the list form, which gloo does not implement
    (gloo has only ``all_to_all_single``), and CI runs on gloo."""

    @staticmethod
    def forward(ctx, x, group, sp: int, to_heads: bool):
        ctx.group, ctx.sp, ctx.to_heads = group, sp, to_heads
        return (_seq_to_heads if to_heads else _heads_to_seq)(x, group, sp)

    @staticmethod
    def backward(ctx, grad):
        back = _heads_to_seq if ctx.to_heads else _seq_to_heads
        return back(grad.contiguous(), ctx.group, ctx.sp), None, None, None


@dataclass
class UlyssesAttention:
    """What the ``"ulysses"`` attention function needs, kept on each attention module."""

    group: Any
    sp: int
    inner: str  # the model's attention implementation before the rung
    kv_repeat: int  # copies of each kv head, so that sp divides the kv heads


def _all_gather_positions(position_ids: torch.Tensor, ctx: UlyssesAttention) -> torch.Tensor:
    # (B, T/sp) -> (B, T): integer positions, no gradient
    parts = [torch.empty_like(position_ids) for _ in range(ctx.sp)]
    dist.all_gather(parts, position_ids.contiguous(), group=ctx.group)
    return torch.cat(parts, dim=-1)


def _dense(query, key, value, position_ids, dropout, scaling):
    """Causal attention within documents. query [B, h, T, D], key/value [B, hkv, T, D] -> [B, T, h, D]."""
    key = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)  # (B, h, T, D)
    value = value.repeat_interleave(query.shape[1] // value.shape[1], dim=1)
    t = query.shape[2]
    causal = torch.ones(t, t, dtype=torch.bool, device=query.device).tril()
    if position_ids is not None:
        doc = doc_ids_from_positions(position_ids.expand(query.shape[0], -1))  # (B, T)
        mask = (causal & (doc[:, :, None] == doc[:, None, :]))[:, None]  # (B, 1, T, T)
    else:
        mask = causal
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling)
    return out.transpose(1, 2).contiguous()  # (B, h, T, D) -> (B, T, h, D)


def _gathered_route(module, hidden: torch.Tensor | None, ctx: UlyssesAttention) -> PooledRoute | None:
    """A learned router's block means for the head shard: the router pools and projects this rank's
    sequence shard ([B, T/sp, hidden] -> [B, Hkv, nb/sp, d]; shards are whole blocks, since rows are
    padded to sp x block), and the means go through the same all-to-all as k (-> [B, Hkv/sp, nb, d]).
    The routing gradient flows back through it to every rank's router replica. None: the attention
    router (q/k themselves)."""
    cfg = ssa_config_of(module.config)
    if cfg.router != "learned":
        return None
    if hidden is None or not hasattr(module, "ssa_router"):
        raise ParallelError(
            f"layer {module.layer_idx}: attention.ssa.router=learned but the attention module has no ssa_router "
            "or got no layer input (build the model with ssa_kernels.hf.convert_to_ssa)"
        )
    pooled = module.ssa_router.pooled(hidden, cfg.block_size)
    means = []
    for m in (pooled.q_mean, pooled.k_mean):  # (B, Hkv, nb/sp, d)
        if ctx.kv_repeat > 1:
            m = m.repeat_interleave(ctx.kv_repeat, dim=1)
        means.append(_AllToAll.apply(m, ctx.group, ctx.sp, True))  # (B, Hkv/sp, nb, d)
    return PooledRoute(means[0], means[1], pooled.seq_len * ctx.sp)


def group_query_means(module, query: torch.Tensor, kv_heads: int, ctx: UlyssesAttention) -> torch.Tensor | None:
    """SSA's attention router with kv heads repeated (sp > kv heads): each kv head's block-mean query over all
    G of its query heads, for the head shard. After the all-to-all a rank holds a copy of the kv head with only
    G / kv_repeat of its query heads, whose mean would select other blocks than the single-process model does;
    so the shard's means are taken here, over all heads ([B, Hq, T/sp, D] -> [B, Hkv, nb/sp, D]; shards are
    whole blocks), repeated like the kv heads and all-to-all'd (-> [B, Hkv * r / sp, nb, D]). None when no
    kv head is repeated or a learned router routes."""
    cfg = ssa_config_of(module.config)
    if ctx.kv_repeat == 1 or cfg.router == "learned":
        return None
    means = query_summary(query, kv_heads, cfg.block_size).repeat_interleave(ctx.kv_repeat, dim=1)
    return _AllToAll.apply(means, ctx.group, ctx.sp, True)


def ulysses_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """HF attention function. query [B, Hq, T/sp, D], key/value [B, Hkv, T/sp, D] (post-RoPE, local
    shard) -> ([B, T/sp, Hq, D], None)."""
    ctx: UlyssesAttention = module.ulysses
    q_means = group_query_means(module, query, key.shape[1], ctx) if ctx.inner == "ssa" else None
    if ctx.kv_repeat > 1:  # (B, Hkv, T/sp, D) -> (B, Hkv * r, T/sp, D), copies adjacent (GQA order kept)
        key = key.repeat_interleave(ctx.kv_repeat, dim=1)
        value = value.repeat_interleave(ctx.kv_repeat, dim=1)
    q, k, v = (_AllToAll.apply(x, ctx.group, ctx.sp, True) for x in (query, key, value))  # (B, H/sp, T, D)
    position_ids = kwargs.pop("position_ids", None)
    if position_ids is not None:
        position_ids = _all_gather_positions(position_ids, ctx)  # (B, T)
    if ctx.inner == "ssa":
        route = _gathered_route(module, kwargs.get("ssa_hidden"), ctx)
        if q_means is not None:  # the attention router over whole GQA groups (group_query_means)
            route = PooledRoute(q_means, block_means(k, ssa_config_of(module.config).block_size), k.shape[2])
        out, _ = ssa_attention_forward(
            module, q, k, v, None, dropout, scaling, position_ids=position_ids, ssa_route=route
        )
    elif ctx.inner.startswith("flash"):  # varlen from the full positions; not exercised on CPU
        fn = AttentionInterface._global_mapping[ctx.inner]
        out, _ = fn(module, q, k, v, None, dropout=dropout, scaling=scaling, position_ids=position_ids, **kwargs)
    else:  # sdpa / eager: the same math; the per-document causal mask is built from the full positions
        out = _dense(q, k, v, position_ids, dropout, scaling)
    # (B, T, H/sp, D) -> (B, H/sp, T, D) -> all-to-all -> (B, Hq, T/sp, D) -> (B, T/sp, Hq, D)
    out = _AllToAll.apply(out.transpose(1, 2).contiguous(), ctx.group, ctx.sp, False)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register("ulysses", ulysses_attention_forward)


def kv_repeat_for(heads: int, kv_heads: int, sp: int) -> int:
    """Smallest number of copies of each kv head so that sp divides the kv heads (they then still
    divide the query heads)."""
    if heads % sp:
        raise ParallelError(
            f"parallel.sp={sp} must divide the model's {heads} attention heads "
            f"(model.hf_config.num_attention_heads): use parallel.sp in "
            f"{[d for d in range(1, heads + 1) if heads % d == 0]}"
        )
    # heads is a multiple of kv_heads and of sp, so of lcm(kv_heads, sp) = kv_heads * r
    return sp // math.gcd(sp, kv_heads)


class SequenceSharded(nn.Module):
    """``forward(input_ids, labels, position_ids)`` of the wrapped loss model on this rank's sequence
    shard: rows (B, T) padded to a multiple of ``multiple`` (padding is a document of its own with
    IGNORE labels, after every real token, so causal attention keeps it out of the real tokens)."""

    rung = "ulysses"  # named in the padding log line
    multiple_names = "parallel.sp x block"

    def __init__(self, module: nn.Module, sp: int, sp_rank: int, multiple: int):
        super().__init__()
        self.module, self.sp, self.sp_rank, self.multiple = module, sp, sp_rank, multiple
        self._logged = False

    def shard(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's tokens of padded rows: (B, T) -> (B, T/sp), the sp_rank-th contiguous slice."""
        n = x.shape[1] // self.sp
        return x[:, self.sp_rank * n : (self.sp_rank + 1) * n]

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.module.decoder_layers

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1]
        pad = -t % self.multiple
        if pad:
            if not self._logged:
                log.info(
                    "%s: sequences of %d tokens padded to %d (a multiple of %s = %d); "
                    "the %d padding tokens have no labels",
                    self.rung, t, t + pad, self.multiple_names, self.multiple, pad,
                )  # fmt: skip
                self._logged = True
            pad_pos = torch.arange(pad, device=position_ids.device).expand(position_ids.shape[0], -1)
            input_ids = F.pad(input_ids, (0, pad), value=0)
            labels = F.pad(labels, (0, pad), value=IGNORE_INDEX)
            position_ids = torch.cat([position_ids, pad_pos], dim=1)  # restart: a document of its own
        # (B, T) -> this rank's tokens: global positions kept, labels already shifted
        return self.module(self.shard(input_ids), self.shard(labels), self.shard(position_ids))


def shard_sequences(
    model: nn.Module, dims: ParallelDims, rung: str = "ulysses", across_nodes: bool = False
) -> nn.Module:
    """Switch ``model.lm``'s attention to the Ulysses wrapper of its own implementation and shard
    sequences over the SP group (``model`` unchanged when sp == 1). No gradient synchronisation: the
    caller's rung adds it (DDP here, ZeRO-3 under ``offload``). The SP group stays inside a node unless
    ``across_nodes`` (``parallel=multinode``); ``rung`` names the caller in errors and logs."""
    if dims.sp == 1:
        return model
    if not across_nodes:
        require_sp_within_node(dims, rung)
    lm = model.lm
    config = lm.config
    inner = config._attn_implementation
    if inner not in INNER:
        raise ParallelError(f"parallel.sp>1 wraps attention {INNER}, not {inner!r} (attention.impl)")
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    ctx = UlyssesAttention(dims.sp_group, dims.sp, inner, kv_repeat_for(heads, kv_heads, dims.sp))
    if ctx.kv_repeat > 1:
        log.info("ulysses: %d kv heads repeated %dx for parallel.sp=%d", kv_heads, ctx.kv_repeat, dims.sp)
    for _, attn in _attention_modules(lm):
        attn.ulysses = ctx
    lm.set_attn_implementation("ulysses")
    multiple = dims.sp * (ssa_config_of(config).block_size if inner == "ssa" else 1)
    sharded = SequenceSharded(model, dims.sp, dims.sp_rank, multiple)
    sharded.rung = rung
    return sharded


def apply_ulysses(model: nn.Module, dims: ParallelDims) -> nn.Module:
    """Shard sequences over the SP group (:func:`shard_sequences`) and DDP the result over the whole
    world (dp x sp); plain data parallelism when sp == 1."""
    return apply_ddp(shard_sequences(model, dims), dims)
