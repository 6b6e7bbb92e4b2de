"""The straight-through routing gradient of SSA's attention router, added to dq and dk in place.

With ``router: attention`` the selector scores routed key block j for query block i as
``score_ij = q̄_i · k̄_j / sqrt(D)``: q̄_i is the mean query of block i over its real tokens and the G
query heads of the kv head's group, k̄_j the mean key of block j (``selector.routing_scores``). The
straight-through mechanism (``ssa_kernels.routing_bias``) adds ``score - score.detach()`` to the logits
of block j's keys for block i's queries, so ``d score_ij = dbias_ij``, the sum of dS over that tile,
which the attention backward already computes.

Why not autograd: through the two block means, autograd makes a q-sized and a k-sized gradient
(8 GiB + 2 GiB at 1M tokens, 32 / 8 heads, D = 128, bf16) and only then sums them into dq and dk:
measured 8.1 GiB of extra peak memory at 1M, 20% of q, k, v, o and their gradients. Here both block
gradients stay [Bt, Hkv, nb, D] and are broadcast into the rows of their blocks in place:

    dq[b, h*G + g, t] += (sum_s w[i, s] k̄[idx[i, s]]) / (sqrt(D) G n_i)       for t in block i
    dk[b, h, t]       += (sum_{(i, s): idx[i, s] = j} w[i, s] q̄_i) / (sqrt(D) n_j)   for t in block j

with ``w = dbias`` on routed slots and 0 elsewhere, ``n_i`` the real tokens of block i. Both attention
backends (``reference.py``, ``triton.py``) call :func:`add_routing_grads` when given ``routed_mask``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ssa_kernels.selector.reference import _block_token_counts, block_means, query_summary, scores_backward

__all__ = ["add_routing_grads"]

# Slots gathered at once: bounds the [Bt, Hkv, nb, chunk, D] fp32 gather (256 MiB; 0.6% of q, k, v, o
# and their gradients at 1M tokens).
_GATHER_BYTES = 256 << 20


def _add_per_block(x: torch.Tensor, g: torch.Tensor, block_size: int) -> None:
    """x [Bt, H, T, D] += g [Bt, Hkv, nb, D] broadcast over the H // Hkv heads of each group and the
    tokens of each block, in place (no T-sized temporary: the broadcast is a stride-0 view)."""
    bt, h, t, d = x.shape
    hkv = g.shape[1]
    full = t // block_size
    xv = x.view(bt, hkv, h // hkv, t, d)
    if full:
        xv[..., : full * block_size, :].unflatten(-2, (full, block_size)).add_(g[:, :, None, :full, None, :])
    if full * block_size < t:
        xv[..., full * block_size :, :].add_(g[:, :, None, full:, :])


def add_routing_grads(
    dq: torch.Tensor | None,
    dk: torch.Tensor | None,
    q: torch.Tensor,
    k: torch.Tensor,
    indices: torch.Tensor,
    dbias: torch.Tensor,
    routed_mask: torch.Tensor,
    block_size: int,
    add_per_block: Callable[[torch.Tensor, torch.Tensor, int], None] = _add_per_block,
    scores_grad: Callable = scores_backward,
    means: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """Add the routing gradient (module docstring) to dq [Bt, Hq, T, D] and dk [Bt, Hkv, T, D] in place
    (either may be None). indices, dbias (the block-bias gradient) and routed_mask (bool: the slot holds a
    routed block whose score carries the gradient) are [Bt, Hkv, nb, S]. ``add_per_block``: the broadcast add
    into dq and dk (``_add_per_block``, or the Triton backend's kernel of it); ``scores_grad``: the block-mean
    gradients (``scores_backward``, or the Triton backend's kernel of it); ``means``: (q̄, k̄) [Bt, Hkv, nb, D] as the
    selector scored them (``Selection.means``), or None to compute them here from q and k."""
    if dq is None and dk is None:
        return
    bt, hq, t, d = q.shape
    hkv, nb = k.shape[1], indices.shape[2]
    acc = torch.promote_types(q.dtype, torch.float32)
    w = torch.where(routed_mask, dbias.to(acc), 0.0)  # (Bt, Hkv, nb, S); padding slots have w = 0
    if means is None:
        q_mean = query_summary(q, hkv, block_size)  # (Bt, Hkv, nb, D)
        k_mean = block_means(k, block_size)  # (Bt, Hkv, nb, D)
    else:
        q_mean, k_mean = (m.to(acc) for m in means)
    chunk = max(1, _GATHER_BYTES // max(1, bt * hkv * nb * d * 4))
    g_q, g_k = scores_grad(q_mean, k_mean, indices, w, chunk, dq is not None, dk is not None)
    counts = _block_token_counts(t, block_size, q.device, acc)  # (nb,)
    if g_q is not None:
        add_per_block(dq, g_q / (math.sqrt(d) * (hq // hkv) * counts[:, None]), block_size)
    if g_k is not None:
        add_per_block(dk, g_k / (math.sqrt(d) * counts[:, None]), block_size)
