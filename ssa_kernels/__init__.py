"""Subquadratic Sparse Attention (SSA).

``ssa_attention`` is the one public function: select key blocks by content (``selector/``), then
attend exactly to them (``attention/``). The PyTorch references beside each op are the oracle and
the CPU path; the Triton kernels (``attention/triton.py``, ``selector/fast.py``) run behind
``backend``. Importing this package registers ``attn_implementation="ssa"`` with HF transformers
(``hf.py``).
"""

from __future__ import annotations

import torch

from ssa_kernels.attention import sparse_attention
from ssa_kernels.config import SSAConfig, resolve_backend
from ssa_kernels.distill import AddAuxiliaryGradient, block_mass, router_distill_loss
from ssa_kernels.selector import (
    PooledRoute,
    Selection,
    routed_bounds,
    routing_scores,
    routing_scores_pooled,
    select_blocks,
    select_blocks_pooled,
    select_by_scores,
)
from ssa_kernels.selector.reference import _ascending, block_means, block_minmax


def _routed_slots(sel: Selection, cfg: SSAConfig, doc_ids, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(slot, routed_ok), each [Bt, Hkv, nb, topk]: where each routed block sits in the sorted union
    ``sel.indices`` and whether its score carries the routing gradient. A query block with no more
    candidates than topk_blocks routes to all of them whatever the scores: nothing to learn there (and
    with a budget covering every block, gradients stay dense)."""
    lo, hi = routed_bounds(doc_ids, seq_len, cfg, sel.routed.device)  # [Bt or 1, nb], [nb]
    contested = (hi - lo).clamp_min(0) > cfg.topk_blocks  # [Bt or 1, nb]
    routed_ok = (sel.routed >= 0) & contested[:, None, :, None]
    # Slot of each routed block in the sorted, -1-padded union (padding sorts last as +inf).
    big = torch.iinfo(torch.int64).max
    union = torch.where(sel.indices >= 0, sel.indices, big)  # [Bt, Hkv, nb, S]
    slot = torch.searchsorted(union, torch.where(routed_ok, sel.routed, big))  # [Bt, Hkv, nb, topk]
    return slot.clamp_max(union.shape[-1] - 1), routed_ok


def routing_bias(q: torch.Tensor, k: torch.Tensor, sel: Selection, cfg: SSAConfig, doc_ids=None) -> torch.Tensor:
    """[Bt, Hkv, nb, S] logit bias per listed block: ``score - score.detach()`` on routed blocks, 0
    elsewhere. Zero in the forward pass, so the output is exactly attention over the selection; in
    the backward each routed score receives the summed gradient of its block's attention logits, the
    signal "this block deserved more (or less) attention", which trains the routing end to end."""
    return _straight_through(routing_scores(q, k, sel.routed, cfg, doc_ids), sel, cfg, doc_ids, q.shape[2])


def _straight_through(scores: torch.Tensor, sel: Selection, cfg: SSAConfig, doc_ids, seq_len: int) -> torch.Tensor:
    """The bias of :func:`routing_bias` from differentiable routed scores [Bt, Hkv, nb, topk]."""
    slot, routed_ok = _routed_slots(sel, cfg, doc_ids, seq_len)
    st = torch.where(routed_ok, scores - scores.detach(), 0.0)  # 0 forward, d/dscore = 1
    bias = torch.zeros(sel.indices.shape, dtype=st.dtype, device=st.device)
    return bias.scatter_add(-1, slot, st)


def routed_mask(sel: Selection, cfg: SSAConfig, doc_ids, seq_len: int) -> torch.Tensor:
    """[Bt, Hkv, nb, S] bool: the slots of ``sel.indices`` whose routing score carries the gradient
    (those :func:`routing_bias` gives a nonzero gradient). The attention backends take it to add the
    same gradient to q and k in place when q and k route (``attention/routing.py``)."""
    slot, routed_ok = _routed_slots(sel, cfg, doc_ids, seq_len)
    hits = torch.zeros(sel.indices.shape, dtype=torch.int32, device=slot.device)
    return hits.scatter_add_(-1, slot, routed_ok.to(torch.int32)) > 0  # padding slots may share a slot: add


def _attend_near_far(attend, q, k, v, far, indices, cfg: SSAConfig, doc_ids, scale, bias) -> torch.Tensor:
    """``ssa_attention`` with ``far``: the local-window blocks with (q, k), the others with ``far``, merged.

    Two calls of the same sparse-attention op rather than a kernel with two q/k pairs: each returns its
    log-sum-exp, whose gradient both backends take (``delta = rowsum(dO * O) - dlse``), so the merge
    ``out = sum_i exp(lse_i - lse) * out_i`` is exact forward and backward, at the cost of a second pass
    over q. Routed blocks are all far (they lie before the local window), so the routing bias goes with
    the far call; a row with no far block gets lse -inf there and weight 0."""
    nb = indices.shape[2]
    is_far = (indices >= 0) & (indices <= torch.arange(nb, device=indices.device).view(nb, 1) - cfg.local_blocks)
    near_idx = _ascending(torch.where(is_far, -1, indices))[0]  # the far ones removed, padding last again
    far_idx = torch.where(is_far, indices, -1)  # far blocks come first in the ascending union: still padded last
    out_n, lse_n = attend(q, k, v, near_idx, cfg.block_size, doc_ids=doc_ids, scale=scale)
    out_f, lse_f = attend(far[0], far[1], v, far_idx, cfg.block_size, doc_ids=doc_ids, scale=scale, block_bias=bias)
    lse = torch.logaddexp(lse_n, lse_f)  # the near call always has the diagonal block: finite
    w_n, w_f = (lse_n - lse).exp().unsqueeze(-1), (lse_f - lse).exp().unsqueeze(-1)
    acc = torch.promote_types(q.dtype, torch.float32)  # fp32, or fp64 for fp64 inputs
    return (out_n.to(acc) * w_n + out_f.to(acc) * w_f).to(q.dtype)


def ssa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cfg: SSAConfig,
    doc_ids: torch.Tensor | None = None,
    scale: float | None = None,
    backend: str | None = None,
    route: tuple[torch.Tensor, torch.Tensor] | PooledRoute | None = None,
    far: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """SSA: q [Bt, Hq, T, D] (post-RoPE), k, v [Bt, Hkv, T, D] (GQA, not repeated), doc_ids [Bt, T]
    (document index per token; attention stays within documents) -> out [Bt, Hq, T, D].

    ``route``: (route_q [Bt, Hr, T, d], route_k [Bt, Hkv, T, d]) with Hr a multiple of Hkv, what the
    selector scores (a learned router's outputs, ``ssa_kernels/router.py``), or their block means
    (``PooledRoute``: the router projected block-pooled hidden states); None: q and k themselves.
    The routing gradient (``cfg.routing``: straight-through, or with a router the distillation loss of
    ``ssa_kernels/distill.py`` joined to the backward) reaches whatever produced them. ``backend``: overrides
    ``cfg.backend`` (see :func:`resolve_backend`).

    ``far``: (q_far [Bt, Hq, T, D], k_far [Bt, Hkv, T, D]), the query and key rotated for the far blocks
    (``cfg.far_distance``: every listed block outside the local window). Those blocks are attended with
    q_far . k_far, the local ones with q . k, in one softmax (two sparse-attention calls merged by their
    log-sum-exp in fp32, fp64 for fp64 inputs; both carry gradients). None: every block with q . k."""
    resolved = resolve_backend(backend or cfg.backend, q.device)
    if resolved == "triton":
        # imported here: Triton is needed only when its kernels run
        from ssa_kernels.attention.triton import sparse_attention_triton as attend
        from ssa_kernels.selector.fast import select_blocks_fast as select
        from ssa_kernels.selector.fast import select_blocks_fast_pooled as select_pooled
    else:
        attend, select, select_pooled = sparse_attention, select_blocks, select_blocks_pooled
    if torch.is_autocast_enabled(q.device.type):  # HF's RoPE leaves q, k in fp32 beside a bf16 v: one dtype
        dtype = torch.get_autocast_dtype(q.device.type)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        far = None if far is None else (far[0].to(dtype), far[1].to(dtype))
    pooled = isinstance(route, PooledRoute)
    rq, rk = route[:2] if route is not None else (q, k)
    with torch.no_grad():
        if cfg.router == "oracle":  # the blocks of the layer's own dense attention mass (a diagnostic upper bound)
            every = torch.arange(-(-q.shape[2] // cfg.block_size), device=q.device)
            mass = block_mass(q, k, every, cfg.block_size, doc_ids, scale, far, cfg.local_blocks, resolved,
                              rows=cfg.distill_rows)  # fmt: skip
            sel = select_by_scores(mass, q.shape[2], cfg, doc_ids)
        else:
            sel = select_pooled(route, cfg, doc_ids) if pooled else select(rq, rk, cfg, doc_ids)
    bias = mask = None
    if cfg.routing == "straight_through" and torch.is_grad_enabled() and (rq.requires_grad or rk.requires_grad):
        if route is None:  # q and k route: the backend adds the routing gradient to dq, dk in place
            mask = routed_mask(sel, cfg, doc_ids, q.shape[2])
        elif pooled:
            bias = _straight_through(
                routing_scores_pooled(route, sel.routed, cfg, doc_ids), sel, cfg, doc_ids, q.shape[2]
            )
        else:
            bias = routing_bias(rq, rk, sel, cfg, doc_ids)
    if far is None:
        means = sel.means if mask is not None else None  # the selector's q̄, k̄: the routing gradient reuses them
        out, _ = attend(
            q, k, v, sel.indices, cfg.block_size, doc_ids=doc_ids, scale=scale, block_bias=bias, routed_mask=mask,
            route_means=means,
        )  # fmt: skip
    else:
        out = _attend_near_far(attend, q, k, v, far, sel.indices, cfg, doc_ids, scale, bias)
    if (
        cfg.routing == "distill"
        and torch.is_grad_enabled()
        and route is not None
        and (rq.requires_grad or rk.requires_grad)
    ):
        if not pooled:  # per-token routing tensors: their block means are what the selector scores
            bounds = block_minmax(rk, cfg.block_size) if cfg.distill_score == "bound" else (None, None)
            route = PooledRoute(block_means(rq, cfg.block_size), block_means(rk, cfg.block_size), q.shape[2], *bounds)
        far_t = None if far is None or cfg.distill_target != "attended" else (far[0].detach(), far[1].detach())
        loss = router_distill_loss(q.detach(), k.detach(), route, cfg, doc_ids, scale, far=far_t, backend=resolved)
        out = AddAuxiliaryGradient.apply(out, loss * cfg.distill_weight)
    return out


__all__ = [
    "PooledRoute",
    "SSAConfig",
    "Selection",
    "routed_mask",
    "routing_bias",
    "select_blocks",
    "sparse_attention",
    "ssa_attention",
]

import ssa_kernels.hf  # noqa: E402,F401  (registers attn_implementation="ssa")
