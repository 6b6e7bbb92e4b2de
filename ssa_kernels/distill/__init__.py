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
``q_mean_i . k_mean_j / sqrt(d)`` (the selector's leaf scores; with ``distill_score=bound`` the bound of
leaf_score=bound) over the same blocks, and the loss is
KL(target || router), weighted by the share of the block's dense mass that lies in the routed range (a
query block that only looks at its window says little about where to route). This is DeepSeek-V3.2's
indexer warm-up (KL to the summed attention distribution), at block granularity. ``cfg.distill_target``
says which dense attention (with ``far_distance``: true distances, or the one SSA computes).

Cost: the target needs the dense probabilities of the sampled rows against every key, O(rows x T) per
layer, without gradient: with every query block sampled it is a dense attention forward (two score passes),
so distillation is for the short-context stages (the router then carries to long contexts; its scores are
means, and the pyramid searches them). ``reference.py`` materialises them in chunks of about
``CHUNK_ELEMENTS`` fp32 values (the CPU path and the oracle); ``triton.py`` sums them per key block in
registers (the GPU path, :func:`block_mass`).

The loss enters the backward through :class:`AddAuxiliaryGradient`, which leaves the attention output
unchanged, so the reported LM loss is untouched and only the router's parameters (its input is
detached) receive the gradient of ``distill_weight x loss``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ssa_kernels.config import SSAConfig, resolve_backend
from ssa_kernels.distill.reference import CHUNK_ELEMENTS, dense_block_mass, doc_starts
from ssa_kernels.selector.reference import PooledRoute, routable_mask

__all__ = [
    "CHUNK_ELEMENTS",
    "AddAuxiliaryGradient",
    "block_mass",
    "dense_block_mass",
    "distill_query_blocks",
    "doc_starts",
    "router_block_scores",
    "router_distill_loss",
]


def block_mass(
    q: Tensor,
    k: Tensor,
    query_blocks: Tensor,
    block_size: int,
    doc_ids: Tensor | None = None,
    scale: float | None = None,
    far: tuple[Tensor, Tensor] | None = None,
    local_blocks: int = 1,
    backend: str = "auto",
    rows: str = "mean",
) -> Tensor:
    """:func:`~ssa_kernels.distill.reference.dense_block_mass` on the chosen backend (``resolve_backend``): the
    Triton kernel (``triton.py``, no materialised probabilities) for CUDA tensors under "auto", the PyTorch
    reference elsewhere. [Bt, Hkv, nq, nb] fp32. ``rows``: how the query block's rows combine ("mean" / "max")."""
    if resolve_backend(backend, q.device) == "triton":
        from ssa_kernels.distill.triton import dense_block_mass_triton  # Triton only when its kernel runs

        start = None if doc_ids is None else doc_starts(doc_ids, q.shape[0], q.shape[2], q.device)
        return dense_block_mass_triton(q, k, query_blocks, block_size, start, scale, far, local_blocks, rows=rows)
    return dense_block_mass(
        q, k, query_blocks, block_size, doc_ids, scale, far=far, local_blocks=local_blocks, rows=rows
    )


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
    backend: str = "reference",
) -> Tensor:
    """Weighted mean over (batch row, kv head, query block) of KL(dense block mass || router softmax) on
    the routed range (module doc). q, k: the attention's own [Bt, Hq, T, D], [Bt, Hkv, T, D] (targets,
    no gradient); route: the router's block means (the gradient reaches them); far: the far blocks' (q, k)
    as :func:`dense_block_mass` takes them (``cfg.distill_target``); backend: where the target is computed
    (:func:`block_mass`). fp32 0-dim tensor, 0 with a zero gradient when no query block has two routable blocks."""
    seq_len = route.seq_len
    if query_blocks is None:
        query_blocks = distill_query_blocks(seq_len, cfg, q.device)
    if len(query_blocks) == 0:
        return (route.q_mean.sum() + route.k_mean.sum()).float() * 0.0
    mass = block_mass(q, k, query_blocks, cfg.block_size, doc_ids, scale, far, cfg.local_blocks, backend,
                      rows=cfg.distill_rows)  # fmt: skip
    routable = routable_mask(doc_ids, seq_len, cfg, q.device, query_blocks)[:, None]  # (Bt or 1, 1, nq, nb)
    target_mass = torch.where(routable, mass, 0.0)
    total = target_mass.sum(-1)  # (Bt, Hkv, nq): the block's dense mass in the routed range
    usable = routable.sum(-1) >= 2  # one routable block: nothing to rank
    target = target_mass / total.clamp_min(1e-30)[..., None]
    weight = torch.where(usable, total.clamp_max(1.0), 0.0)  # distill_rows=max: its rows' maxima may sum past 1
    qm = route.q_mean[:, :, query_blocks].float()  # (Bt, Hkv, nq, D)
    logits = router_block_scores(qm, route, cfg) / math.sqrt(qm.shape[-1])  # (Bt, Hkv, nq, nb)
    log_p = torch.log_softmax(logits.masked_fill(~routable, -math.inf), dim=-1)
    # KL = sum_j t_j (log t_j - log p_j) over routable j with t_j > 0 (0 log 0 = 0, and -inf never multiplies)
    kl = torch.where(target > 0, target * (target.clamp_min(1e-30).log() - log_p.masked_fill(~routable, 0.0)), 0.0)
    kl = kl.sum(-1)  # (Bt, Hkv, nq)
    return (kl * weight).sum() / weight.sum().clamp_min(1e-30)


def router_block_scores(qm: Tensor, route: PooledRoute, cfg: SSAConfig) -> Tensor:
    """The router's scores of every block for the query blocks' mean routing queries qm [Bt, Hkv, nq, D] fp32,
    as ``cfg.distill_score`` says: q_mean . k_mean, or the bound sum_d max(q_d low_d, q_d high_d) over the blocks'
    token-key min / max (``route.k_low`` / ``k_high``), as q+ . high + q- . low: two products, no [.., nq, nb, D]
    tensor. [Bt, Hkv, nq, nb] fp32, differentiable in qm and in the means or the extremes."""
    if cfg.distill_score == "mean":
        return qm @ route.k_mean.float().transpose(-1, -2)
    if route.k_low is None or route.k_high is None:
        raise ValueError(
            "attention.distill_score=bound trains the blocks' bound scores, which need their token keys' min / max; "
            "this PooledRoute has none (the sequence-parallel wrappers pool means only): set "
            "attention.distill_score=mean"
        )
    low, high = route.k_low.float().transpose(-1, -2), route.k_high.float().transpose(-1, -2)
    return qm.clamp_min(0) @ high + qm.clamp_max(0) @ low


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
