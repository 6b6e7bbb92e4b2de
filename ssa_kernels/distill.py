"""Router distillation (``SSAConfig.routing == "distill"``): the learned router is trained to put its
routing scores where the layer's own DENSE attention puts its mass.

Why a second routing mechanism beside straight-through: straight-through gives a gradient only to the
scores of blocks that were routed, so a block the router never picks (a needle far back, at the start of
training) never gets a signal that it deserved attention; the router must find it by chance first
(measured: docs/functional_context.md, none of the H200 stage-2 runs learnt to route beyond the window).
Distillation sees every candidate block: per sampled query block i, the target is the dense causal
attention mass of the block's rows (mean over its real rows and the G query heads of the kv head) on
each routable key block j (the routed range: after the sinks, before the local window, in the
document), renormalised over those blocks; the router's distribution is the softmax of its block scores
``q_mean_i . k_mean_j / sqrt(d)`` (the selector's leaf scores) over the same blocks, and the loss is
KL(target || router), weighted by the share of the block's dense mass that lies in the routed range (a
query block that only looks at its window says little about where to route). This is DeepSeek-V3.2's
indexer warm-up (KL to the summed attention distribution), at block granularity. ``cfg.distill_target``
says which dense attention (with ``far_distance``: true distances, or the one SSA computes).

Cost: the target needs the dense probabilities of the sampled rows against every key, O(rows x T) per
layer, computed without gradient in chunks of about ``CHUNK_ELEMENTS`` fp32 values: with every query
block sampled it is a dense attention forward, so distillation is for the short-context stages (the
router then carries to long contexts; its scores are means, and the pyramid searches them).

The loss enters the backward through :class:`AddAuxiliaryGradient`, which leaves the attention output
unchanged, so the reported LM loss is untouched and only the router's parameters (its input is
detached) receive the gradient of ``distill_weight x loss``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ssa_kernels.config import SSAConfig
from ssa_kernels.selector.reference import PooledRoute, routed_bounds

CHUNK_ELEMENTS = 1 << 26  # fp32 probabilities held at once (256 MiB)


def doc_starts(doc_ids: Tensor | None, bt: int, seq_len: int, device: torch.device) -> Tensor:
    """First position of each token's document, [Bt, T] int64 (documents are nondecreasing id runs)."""
    if doc_ids is None:
        return torch.zeros(bt, seq_len, dtype=torch.long, device=device)
    doc_ids = doc_ids.to(device=device, dtype=torch.long).contiguous()
    return torch.searchsorted(doc_ids, doc_ids)


@torch.no_grad()
def dense_block_mass(
    q: Tensor,
    k: Tensor,
    query_blocks: Tensor,
    block_size: int,
    doc_ids: Tensor | None = None,
    scale: float | None = None,
    max_elements: int = CHUNK_ELEMENTS,
    matmul_dtype: torch.dtype | None = None,
    far: tuple[Tensor, Tensor] | None = None,
    local_blocks: int = 1,
) -> Tensor:
    """Dense causal attention mass of sampled query blocks on every key block.

    q [Bt, Hq, T, D] (post-RoPE), k [Bt, Hkv, T, D], query_blocks [nq] int64 ->
    mass [Bt, Hkv, nq, nb] fp32: per query block, the dense probabilities (softmax over the keys each
    row may see: causal, in its document) summed per key block and averaged over the block's real rows
    and the G query heads of kv head h. Each row of the result sums to 1. O(nq x B x T) per head, as
    many query blocks at a time as fit in ``max_elements`` fp32 probabilities (at least one). The q . k
    matmul runs in ``matmul_dtype`` (default q's: bf16 tensor cores under autocast), the softmax in fp32.

    ``far`` (q_far [Bt, Hq, T, D], k_far [Bt, Hkv, T, D]): the logits of keys in blocks j <= i - local_blocks
    (query block i: the far blocks, outside the local window) are q_far . k_far, the others q . k, in one
    softmax: the mass of the attention SSA computes under ``far_distance`` (``_attend_near_far``)."""
    bt, hq, seq_len, d = q.shape
    hkv, B, dev = k.shape[1], block_size, q.device
    group, nb = hq // hkv, -(-seq_len // block_size)
    scale = d**-0.5 if scale is None else scale
    start = doc_starts(doc_ids, bt, seq_len, dev)  # (Bt, T)
    dtype = matmul_dtype or q.dtype
    kd = k.to(dtype)  # (Bt, Hkv, T, D)
    kfd = None if far is None else far[1].to(dtype)
    kpos = torch.arange(seq_len, device=dev)
    per_block = bt * hq * B * seq_len * (1 if far is None else 2)  # with far: two logit tensors at once
    chunk = max(1, max_elements // per_block)
    out = []
    for c in range(0, len(query_blocks), chunk):
        blocks = query_blocks[c : c + chunk]  # (nc,)
        rows = (blocks[:, None] * B + torch.arange(B, device=dev)).flatten()  # (nc*B,) may run past T
        real = rows < seq_len
        rows = rows.clamp_max(seq_len - 1)
        qg = q[:, :, rows].to(dtype).reshape(bt, hkv, group * len(rows), d)  # (Bt, Hkv, G*nc*B, D), row g*nc*B + r
        qpos = rows.repeat(group)  # (G*nc*B,)
        # key s is visible to query t iff start(doc t) <= s <= t
        allowed = (kpos <= qpos[:, None]) & (kpos >= start[:, qpos, None])  # (Bt, G*nc*B, T)
        logits = (qg @ kd.transpose(-1, -2)).float() * scale  # (Bt, Hkv, G*nc*B, T)
        if far is not None:  # far keys: block(s) <= block(t) - local_blocks
            qf = far[0][:, :, rows].to(dtype).reshape(bt, hkv, group * len(rows), d)
            is_far = kpos // B <= (qpos // B - local_blocks)[:, None]  # (G*nc*B, T)
            logits = torch.where(is_far, (qf @ kfd.transpose(-1, -2)).float() * scale, logits)
        p = torch.softmax(logits.masked_fill_(~allowed[:, None], -math.inf), dim=-1)
        p = torch.nn.functional.pad(p, (0, nb * B - seq_len)).view(bt, hkv, group, len(blocks), B, nb, B)
        w = real.view(len(blocks), B).float()  # (nc, B): padding rows of a ragged last block weigh 0
        per_row = p.sum(-1) * w[:, :, None]  # (Bt, Hkv, G, nc, B, nb): mass per key block, real rows only
        mass = per_row.sum((2, 4)) / (group * w.sum(-1))[:, None]  # (Bt, Hkv, nc, nb)
        out.append(mass)
    return torch.cat(out, dim=2)


def distill_query_blocks(seq_len: int, cfg: SSAConfig, device: torch.device) -> Tensor:
    """The query blocks whose rows are distilled this call: those with at least two routable blocks (for
    any batch row), ``cfg.distill_blocks`` of them drawn without replacement by the global torch RNG
    (saved in checkpoints; activation checkpointing replays it), or all of them when it is 0. [nq] int64."""
    nb = -(-seq_len // cfg.block_size)
    first = cfg.sink_blocks + cfg.local_blocks + 1  # hi - lo >= 2 needs i - local_blocks + 1 - sink >= 2
    eligible = torch.arange(min(first, nb), nb, device=device)
    if cfg.distill_blocks and len(eligible) > cfg.distill_blocks:
        pick = torch.randperm(len(eligible))[: cfg.distill_blocks].sort().values
        eligible = eligible[pick.to(device)]
    return eligible


def router_distill_loss(
    q: Tensor,
    k: Tensor,
    route: PooledRoute,
    cfg: SSAConfig,
    doc_ids: Tensor | None = None,
    scale: float | None = None,
    query_blocks: Tensor | None = None,
    far: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Weighted mean over (batch row, kv head, query block) of KL(dense block mass || router softmax) on
    the routed range (module doc). q, k: the attention's own [Bt, Hq, T, D], [Bt, Hkv, T, D] (targets,
    no gradient); route: the router's block means (the gradient reaches them); far: the far blocks' (q, k)
    as :func:`dense_block_mass` takes them (``cfg.distill_target``). fp32 0-dim tensor, 0 with a zero
    gradient when no query block has two routable blocks."""
    seq_len = route.seq_len
    nb = route.k_mean.shape[2]
    if query_blocks is None:
        query_blocks = distill_query_blocks(seq_len, cfg, q.device)
    if len(query_blocks) == 0:
        return (route.q_mean.sum() + route.k_mean.sum()).float() * 0.0
    mass = dense_block_mass(q, k, query_blocks, cfg.block_size, doc_ids, scale, far=far, local_blocks=cfg.local_blocks)
    lo, hi = routed_bounds(doc_ids, seq_len, cfg, q.device)  # [Bt or 1, nb], [nb]
    j = torch.arange(nb, device=q.device)
    routable = (j >= lo[:, query_blocks, None]) & (j < hi[query_blocks, None])  # (Bt or 1, nq, nb)
    routable = routable[:, None]  # (Bt or 1, 1, nq, nb)
    target_mass = torch.where(routable, mass, 0.0)
    weight = target_mass.sum(-1)  # (Bt, Hkv, nq): the block's dense mass in the routed range
    usable = routable.sum(-1) >= 2  # one routable block: nothing to rank
    weight = torch.where(usable, weight, 0.0)
    target = target_mass / weight.clamp_min(1e-30)[..., None]
    qm = route.q_mean[:, :, query_blocks].float()  # (Bt, Hkv, nq, D)
    logits = qm @ route.k_mean.float().transpose(-1, -2) / math.sqrt(qm.shape[-1])  # (Bt, Hkv, nq, nb)
    log_p = torch.log_softmax(logits.masked_fill(~routable, -math.inf), dim=-1)
    # KL = sum_j t_j (log t_j - log p_j) over routable j with t_j > 0 (0 log 0 = 0, and -inf never multiplies)
    kl = torch.where(target > 0, target * (target.clamp_min(1e-30).log() - log_p.masked_fill(~routable, 0.0)), 0.0)
    kl = kl.sum(-1)  # (Bt, Hkv, nq)
    return (kl * weight).sum() / weight.sum().clamp_min(1e-30)


class AddAuxiliaryGradient(torch.autograd.Function):
    """``x`` unchanged in the forward; in the backward ``x`` gets its gradient and ``aux`` (a 0-dim loss)
    gets 1, so ``aux``'s gradient joins the backward of whatever loss ``x`` feeds, without changing the
    loss value (torch has no hook to add a loss term from inside a module; MoE balance losses do this)."""

    @staticmethod
    def forward(ctx, x: Tensor, aux: Tensor) -> Tensor:
        ctx.aux_meta = (aux.dtype, aux.device)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        dtype, device = ctx.aux_meta
        return grad, torch.ones((), dtype=dtype, device=device)
