"""Rung ``ring``: Ring Attention (context parallelism), with Ulysses inside each node (the hybrid).

Layout. The ``parallel.cp`` ranks of a ring group (``ParallelDims``: ranks ``sp`` apart, so a ring
may span nodes) share every row of their replica. A row of T tokens is cut into 2 x cp chunks and
ring rank r holds chunks r and 2cp-1-r (zigzag): under causal attention every rank then has the
same work, an early chunk that sees little and a late one that sees much. With ``parallel.sp`` > 1
(Ulysses inside the node) the sp ranks of a node split that rank's two chunks once more, and an
all-to-all turns q/k/v into all T/cp tokens of the ring rank for H/sp heads before the ring runs
(``parallel/ulysses.py``); the ring group of a rank is the ranks holding the same heads.
``ZigzagSharded`` pads rows to a multiple of 2 x cp x sp (x block_size for SSA) with a padding
document without labels (labels are already shifted by the loader) and keeps this rank's tokens
with their global position ids.

Attention. Each rank keeps its q and passes its k/v around the ring with batched isend/irecv: at step
s it holds the k/v of ring rank r - s. Each (query chunk, key chunk) pair that is not wholly in the
future gives a partial (out, lse), merged into the running output in fp32 (``_merge``:
out = sum_i exp(lse_i - lse) out_i). The masks come from global token indices and document ids
(``doc_ids_from_positions`` of the all-gathered positions, HF's packed-sequence rule), so causality and
packed documents are exactly those of the single-process model. ``_RingAttention`` is an
autograd.Function: its forward saves only the local q, k, v, out and lse; its backward passes k/v
around again with fp32 dK/dV accumulators that travel with them (one extra hop at the end brings each
accumulator home), and recomputes each pair's probabilities from the global lse, flash-attention style:
dS = P * (dP - delta), P = exp(S - lse), delta = rowsum(dO * O). The per-pair math is plain PyTorch
(fp32, chunked over queries): a reference that runs on CPU, where CI tests it.

SSA (``ssa_ring_attention``). Selection needs only block summaries: each rank all-gathers the per-block
query/key means of its ring group (O(T/B) per rank; a learned router's pooled means, or fp64 key-block
sums for the attention router, so the selection is bit-for-bit the single-process one), runs the
selector over the whole row and keeps its own query blocks' lists. Each ring step then attends only to
the listed blocks present in the visiting k/v (``_SparseRing``) and skips a step when no query block
lists any of them. The routing gradient flows through a block bias (``ssa_kernels._straight_through``)
on the all-gathered means, back to every rank's own blocks.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface

from parallel.ddp import apply_ddp
from parallel.dims import ParallelDims, ParallelError, require_sp_within_node
from parallel.ulysses import (
    INNER,
    SequenceSharded,
    UlyssesAttention,
    _all_gather_positions,
    _AllToAll,
    _gathered_route,
    apply_ulysses,
    group_query_means,
    kv_repeat_for,
)
from ssa_kernels import _straight_through, routing_scores_pooled
from ssa_kernels.attention.reference import _groups_to_heads, _heads_to_groups
from ssa_kernels.hf import _attention_modules, doc_ids_from_positions, selection_rule_of, ssa_config_of
from ssa_kernels.selector import PooledRoute, select_blocks_pooled
from ssa_kernels.selector.reference import _block_sums, _select, block_means, query_summary

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 << 20  # fp32 score-sized temporaries of one query chunk (scores, P, dP / dS)


# --- zigzag layout --------------------------------------------------------------------------------


def zigzag_shard(x: torch.Tensor, cp: int, cp_rank: int, dim: int = 1) -> torch.Tensor:
    """Chunks ``cp_rank`` and ``2cp-1-cp_rank`` of ``x`` cut into 2 x cp along ``dim``, concatenated."""
    chunks = x.chunk(2 * cp, dim)
    return torch.cat([chunks[cp_rank], chunks[2 * cp - 1 - cp_rank]], dim)


def unzigzag(parts: list[torch.Tensor], dim: int) -> torch.Tensor:
    """Inverse of :func:`zigzag_shard` over all ranks: ``parts[r]`` (rank r's shard) -> the whole."""
    cp = len(parts)
    halves = [p.chunk(2, dim) for p in parts]
    return torch.cat([halves[i][0] for i in range(cp)] + [halves[cp - 1 - i][1] for i in range(cp)], dim)


@dataclass(frozen=True)
class Ring:
    """A ring group: its size, this rank's place in it and its neighbours' global ranks."""

    group: Any
    size: int
    rank: int
    next: int  # global rank of ring rank + 1: k/v (and their gradients) go there
    prev: int  # global rank of ring rank - 1: they come from there

    @classmethod
    def of(cls, group) -> Ring:
        size, rank = dist.get_world_size(group), dist.get_rank(group)
        return cls(
            group,
            size,
            rank,
            dist.get_global_rank(group, (rank + 1) % size),
            dist.get_global_rank(group, (rank - 1) % size),
        )

    def chunks(self, rank: int) -> tuple[int, int]:
        """The two zigzag chunks (of 2 x size) that ring rank ``rank`` holds."""
        return rank, 2 * self.size - 1 - rank

    def token_index(self, rank: int, length: int, device) -> torch.Tensor:
        """Global index of each of ring rank ``rank``'s ``length`` tokens (two chunks), [length]."""
        c = length // 2
        return torch.cat([torch.arange(i * c, (i + 1) * c, device=device) for i in self.chunks(rank)])

    def shift(self, x: torch.Tensor, tag: int) -> tuple[list, torch.Tensor]:
        """Start sending ``x`` to the next rank and receiving the previous rank's into a new tensor;
        one message each way (the caller packs what travels together). Returns (requests, received)."""
        recv = torch.empty_like(x)
        ops = [
            dist.P2POp(dist.isend, x.contiguous(), self.next, self.group, tag),
            dist.P2POp(dist.irecv, recv, self.prev, self.group, tag),
        ]
        return dist.batch_isend_irecv(ops), recv

    def gather(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """The whole row of the ring's shards ``x`` along ``dim``, in natural order (no gradient)."""
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return unzigzag(parts, dim)


class _RingGather(torch.autograd.Function):
    """Differentiable :meth:`Ring.gather`: the backward sums every rank's gradient of the whole and keeps
    this rank's shard. Written here because ``torch.distributed.nn.all_gather``'s backward needs
    reduce_scatter or the list all_to_all, which gloo (CI) lacks; the tensors are O(T / block) small."""

    @staticmethod
    def forward(ctx, x, ring: Ring, dim: int):
        ctx.ring, ctx.dim = ring, dim
        return ring.gather(x, dim)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.ring.group)
        return zigzag_shard(grad, ctx.ring.size, ctx.ring.rank, ctx.dim), None, None


def _rotate(ring: Ring, kv: torch.Tensor, step_fn: Callable[[int, torch.Tensor], None]) -> None:
    """Forward ring: ``step_fn(j, kv_j)`` for the k/v of every ring rank j, starting with our own; the
    next k/v is in flight while a step computes."""
    for step in range(ring.size):
        last = step == ring.size - 1
        if not last:
            reqs, incoming = ring.shift(kv, tag=0)
        step_fn((ring.rank - step) % ring.size, kv)
        if not last:
            for r in reqs:
                r.wait()
            kv = incoming


def _rotate_with_grads(
    ring: Ring, kv: torch.Tensor, dkv: torch.Tensor, step_fn: Callable[[int, torch.Tensor, torch.Tensor], None]
) -> torch.Tensor:
    """Backward ring: as :func:`_rotate`, and ``dkv`` (the gradient accumulator of the visiting k/v)
    travels with it; ``step_fn(j, kv_j, dkv_j)`` adds this rank's part. After the last step one more
    hop brings each accumulator to its owner. Returns the gradient of our own k/v."""
    for step in range(ring.size):
        last = step == ring.size - 1
        if not last:
            reqs, incoming = ring.shift(kv, tag=0)
        step_fn((ring.rank - step) % ring.size, kv, dkv)
        if ring.size > 1:  # to the next holder of this k/v (the owner after the last step)
            dreqs, dkv = ring.shift(dkv, tag=1)
            for r in dreqs:
                r.wait()
        if not last:
            for r in reqs:
                r.wait()
            kv = incoming
    return dkv


def _merge(acc_out: torch.Tensor, acc_lse: torch.Tensor, out: torch.Tensor, lse: torch.Tensor) -> None:
    """In place, fp32: (acc_out, acc_lse) <- the softmax-merge of itself and a partial (out, lse).
    acc_out/out [B, H, L, D], acc_lse/lse [B, H, L]; rows with no key yet (lse -inf) stay 0 / -inf."""
    new = torch.logaddexp(acc_lse, lse)
    shift = torch.where(torch.isfinite(new), new, 0.0)  # exp(-inf - 0) = 0, never NaN
    acc_out.mul_(torch.exp(acc_lse - shift)[..., None]).add_(out * torch.exp(lse - shift)[..., None])
    acc_lse.copy_(new)


def _acc(x: torch.Tensor) -> torch.dtype:
    """Accumulation dtype: fp32, or fp64 for fp64 inputs (gradcheck)."""
    return torch.promote_types(x.dtype, torch.float32)


def _without_autocast(fn):
    """Run an autograd.Function's forward/backward with autocast off: the per-pair math is fp32 by design
    (bf16 scores and exponentials would lose what the fp32 merge keeps), and autocast would run its
    matmuls in bf16. Inputs keep their dtype; outputs and gradients come back in it."""

    @functools.wraps(fn)
    def run(ctx, *args):
        device = next(a.device.type for a in args if isinstance(a, torch.Tensor))
        with torch.autocast(device, enabled=False):
            return fn(ctx, *args)

    return run


# --- dense ring -----------------------------------------------------------------------------------


def _query_rows(batch: int, heads: int, keys: int) -> int:
    """Query rows per chunk so that three fp32 [B, H, rows, keys] temporaries fit CHUNK_BYTES."""
    return max(1, CHUNK_BYTES // (12 * batch * heads * max(1, keys)))


def _allowed(qidx, kidx, doc_q, doc_k) -> torch.Tensor:
    """[B, 1, 1, Lq, Lk] bool: key before (or at) the query and in its document. qidx [Lq], kidx [Lk]
    global token indices; doc_q [B, Lq], doc_k [B, Lk]."""
    causal = kidx[None, :] <= qidx[:, None]  # (Lq, Lk)
    return (causal & (doc_q[:, :, None] == doc_k[:, None, :]))[:, None, None]


def _pair_forward(q, k, v, qidx, kidx, doc_q, doc_k, scale) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of q [B, Hq, Lq, D] to k, v [B, Hkv, Lk, D] (GQA) under the causal document mask ->
    out [B, Hq, Lq, D] and lse [B, Hq, Lq], fp32; a row with no visible key: out 0, lse -inf."""
    b, hq, lq, d = q.shape
    hkv = k.shape[1]
    acc = _acc(q)
    kf, vf = k.to(acc)[:, :, None], v.to(acc)[:, :, None]  # (B, Hkv, 1, Lk, D)
    out = torch.empty(b, hq, lq, d, dtype=acc, device=q.device)
    lse = torch.empty(b, hq, lq, dtype=acc, device=q.device)
    rows = _query_rows(b, hq, k.shape[2])
    for r0 in range(0, lq, rows):
        r1 = min(lq, r0 + rows)
        qc = q[:, :, r0:r1].to(acc).view(b, hkv, hq // hkv, r1 - r0, d)  # (B, Hkv, G, rows, D)
        s = torch.matmul(qc, kf.transpose(-1, -2)).mul_(scale)  # (B, Hkv, G, rows, Lk)
        s.masked_fill_(~_allowed(qidx[r0:r1], kidx, doc_q[:, r0:r1], doc_k), -math.inf)
        lse_c = torch.logsumexp(s, dim=-1)  # (B, Hkv, G, rows)
        p = s.sub_(torch.where(torch.isfinite(lse_c), lse_c, 0.0)[..., None]).exp_()
        out[:, :, r0:r1] = torch.matmul(p, vf).view(b, hq, r1 - r0, d)
        lse[:, :, r0:r1] = lse_c.view(b, hq, r1 - r0)
    return out, lse


def _pair_backward(q, k, v, do, lse, delta, qidx, kidx, doc_q, doc_k, scale):
    """Gradients of one pair given the global lse and delta (FA-style): dq [B, Hq, Lq, D] and
    dk, dv [B, Hkv, Lk, D], fp32 (dk, dv summed over each kv head's G query heads)."""
    b, hq, lq, d = q.shape
    hkv, g = k.shape[1], hq // k.shape[1]
    acc = _acc(q)
    kf, vf = k.to(acc)[:, :, None], v.to(acc)[:, :, None]  # (B, Hkv, 1, Lk, D)
    dq = torch.empty(b, hq, lq, d, dtype=acc, device=q.device)
    dk = torch.zeros(b, hkv, k.shape[2], d, dtype=acc, device=q.device)
    dv = torch.zeros_like(dk)
    rows = _query_rows(b, hq, k.shape[2])
    for r0 in range(0, lq, rows):
        r1, n = min(lq, r0 + rows), min(lq, r0 + rows) - r0
        qc = q[:, :, r0:r1].to(acc).view(b, hkv, g, n, d)  # (B, Hkv, G, rows, D)
        doc_ = do[:, :, r0:r1].to(acc).view(b, hkv, g, n, d)
        lse_c = lse[:, :, r0:r1].view(b, hkv, g, n, 1)
        s = torch.matmul(qc, kf.transpose(-1, -2)).mul_(scale)  # (B, Hkv, G, rows, Lk)
        s.masked_fill_(~_allowed(qidx[r0:r1], kidx, doc_q[:, r0:r1], doc_k), -math.inf)
        p = s.sub_(torch.where(torch.isfinite(lse_c), lse_c, 0.0)).exp_()  # P = exp(S - lse), 0 where masked
        dv += torch.matmul(p.transpose(-1, -2), doc_).sum(2)  # (B, Hkv, Lk, D), summed over G
        ds = torch.matmul(doc_, vf.transpose(-1, -2)).sub_(delta[:, :, r0:r1].view(b, hkv, g, n, 1)).mul_(p)
        del p
        dq[:, :, r0:r1] = torch.matmul(ds, kf).mul_(scale).view(b, hq, n, d)
        dk += torch.matmul(ds.transpose(-1, -2), qc).mul_(scale).sum(2)
    return dq, dk, dv


def _pairs(ring: Ring, j: int):
    """(query half, key half) of the pairs of our tokens and ring rank j's that are not wholly in
    the future: chunk ids compared, the early half of a rank's tokens is 0, the late one 1."""
    mine, theirs = ring.chunks(ring.rank), ring.chunks(j)
    return [(a, b) for a in (0, 1) for b in (0, 1) if theirs[b] <= mine[a]]


class _RingAttention(torch.autograd.Function):
    @staticmethod
    @_without_autocast
    def forward(ctx, q, k, v, doc, ring: Ring, scale: float):
        # q [B, Hq, L, D], k/v [B, Hkv, L, D]: this rank's two chunks; doc [B, T] global document ids
        b, hq, length, d = q.shape
        c = length // 2
        acc = _acc(q)
        out = torch.zeros(b, hq, length, d, dtype=acc, device=q.device)
        lse = torch.full((b, hq, length), -math.inf, dtype=acc, device=q.device)
        qidx = ring.token_index(ring.rank, length, q.device)  # (L,)
        doc_q = doc[:, qidx]  # (B, L)

        def step(j: int, kv: torch.Tensor) -> None:
            kidx = ring.token_index(j, length, q.device)
            doc_k = doc[:, kidx]
            for a, h in _pairs(ring, j):
                qs, ks = slice(a * c, (a + 1) * c), slice(h * c, (h + 1) * c)
                o, s = _pair_forward(q[:, :, qs], kv[0][:, :, ks], kv[1][:, :, ks], qidx[qs], kidx[ks],
                                     doc_q[:, qs], doc_k[:, ks], scale)  # fmt: skip
                _merge(out[:, :, qs], lse[:, :, qs], o, s)

        _rotate(ring, torch.stack([k, v]), step)  # (2, B, Hkv, L, D): one message per hop
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, doc, out, lse)
        ctx.ring, ctx.scale = ring, scale
        return out

    @staticmethod
    @_without_autocast
    def backward(ctx, grad_out):
        q, k, v, doc, out, lse = ctx.saved_tensors
        ring, scale = ctx.ring, ctx.scale
        length = q.shape[2]
        c = length // 2
        acc = _acc(q)
        delta = (grad_out.to(acc) * out.to(acc)).sum(-1)  # (B, Hq, L)
        dq = torch.zeros(q.shape, dtype=acc, device=q.device)
        qidx = ring.token_index(ring.rank, length, q.device)
        doc_q = doc[:, qidx]

        def step(j: int, kv: torch.Tensor, dkv: torch.Tensor) -> None:
            kidx = ring.token_index(j, length, q.device)
            doc_k = doc[:, kidx]
            for a, h in _pairs(ring, j):
                qs, ks = slice(a * c, (a + 1) * c), slice(h * c, (h + 1) * c)
                dq_, dk_, dv_ = _pair_backward(
                    q[:, :, qs], kv[0][:, :, ks], kv[1][:, :, ks], grad_out[:, :, qs], lse[:, :, qs],
                    delta[:, :, qs], qidx[qs], kidx[ks], doc_q[:, qs], doc_k[:, ks], scale,
                )  # fmt: skip
                dq[:, :, qs] += dq_
                dkv[0][:, :, ks] += dk_
                dkv[1][:, :, ks] += dv_

        dkv = torch.zeros((2, *k.shape), dtype=acc, device=k.device)  # (2, B, Hkv, L, D)
        dkv = _rotate_with_grads(ring, torch.stack([k, v]), dkv, step)
        return dq.to(q.dtype), dkv[0].to(k.dtype), dkv[1].to(v.dtype), None, None, None


def _docs(doc: torch.Tensor | None, batch: int, length: int, device) -> torch.Tensor:
    return doc.expand(batch, -1) if doc is not None else torch.zeros(batch, length, dtype=torch.long, device=device)


def ring_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ring: Ring,
    doc_ids: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Causal attention within documents over the whole row, computed around the ring.

    q [B, Hq, L, D], k, v [B, Hkv, L, D] (GQA, Hq = G x Hkv): this rank's zigzag shard (chunks r and
    2cp-1-r of the row, L = T / cp, even); doc_ids [B, T] global document ids (None: one document).
    Returns out [B, Hq, L, D] in q's dtype; differentiable in q, k, v."""
    if q.shape[2] % 2:
        raise ValueError(f"a ring shard holds two equal chunks; got {q.shape[2]} tokens")
    doc = _docs(doc_ids, q.shape[0], q.shape[2] * ring.size, q.device)
    return _RingAttention.apply(q, k, v, doc, ring, float(scale if scale is not None else q.shape[-1] ** -0.5))


# --- sparse (SSA) ring ----------------------------------------------------------------------------


def _visiting(indices: torch.Tensor, ring: Ring, j: int, cb: int):
    """Which listed blocks (global ids, [B, Hkv, nbl, S], -1 padding) ring rank j's k/v hold, compacted:
    (slot [B, Hkv, nbl, W], local [B, Hkv, nbl, W]) with ``slot`` the position in the list and ``local``
    the block's index within rank j's 2 x cb blocks (-1: none here), W the most any row has. None when
    no row lists any of them (the step is skipped). One host sync, for W."""
    early, late = ring.chunks(j)
    chunk, off = indices.div(cb, rounding_mode="floor"), indices.remainder(cb)
    local = torch.where(chunk == early, off, torch.where(chunk == late, off + cb, -1))
    local = torch.where(indices >= 0, local, -1)
    present = local >= 0
    width = int(present.sum(-1).max())
    if width == 0:
        return None
    slot = torch.argsort((~present).to(torch.int8), dim=-1, stable=True)[..., :width]  # present ones first
    return slot, local.gather(-1, slot)


class _SparseStep:
    """One ring step of SSA for query blocks [b0, b1) of this rank: the listed blocks of the visiting
    k/v, their masks (global token indices and documents) and gathers; shared by forward and backward.
    Shapes: c = b1 - b0, W listed blocks present, B = block_size, G = Hq // Hkv."""

    def __init__(self, local, b0, b1, block_size, qidx, kidx, doc_q, doc_k, groups):
        bt, hkv, nbl, width = local.shape
        B, c = block_size, b1 - b0
        dev = local.device
        lb = local[:, :, b0:b1]  # (Bt, Hkv, c, W)
        valid = lb >= 0
        safe = lb.clamp_min(0)  # absent slots read block 0 of the visiting k/v; all their scores are masked
        base = torch.arange(bt * hkv, device=dev).view(bt, hkv, 1, 1) * nbl
        self.flat = (base + safe).reshape(-1)  # rows of the [Bt*Hkv*nbl, B, D] view of the visiting k/v
        self.shape = (bt, hkv, c, width, B, groups)
        offs = torch.arange(B, device=dev)
        ktok = (safe[..., None] * B + offs).reshape(bt, hkv, c, width * B)  # visiting token of each gathered key
        kpos = kidx[ktok].view(bt, hkv, c, 1, 1, width * B)
        qpos = qidx[b0 * B : b1 * B].view(1, 1, c, 1, B, 1)
        keep = valid[..., None].expand(bt, hkv, c, width, B).reshape(bt, hkv, c, 1, 1, width * B)
        dk = doc_k.gather(1, ktok.reshape(bt, -1)).view(bt, hkv, c, 1, 1, width * B)
        dq = doc_q[:, b0 * B : b1 * B].reshape(bt, 1, c, 1, B, 1)
        self.allowed = keep & (kpos <= qpos) & (dk == dq)  # (Bt, Hkv, c, 1, B, W*B): broadcast over G

    def gather(self, blocks: torch.Tensor) -> torch.Tensor:
        """[Bt*Hkv*nbl, B, D] -> the listed blocks [Bt, Hkv, c, W*B, D]."""
        bt, hkv, c, width, B, _ = self.shape
        return blocks.index_select(0, self.flat).view(bt, hkv, c, width * B, blocks.shape[-1])

    def scatter_add(self, acc: torch.Tensor, grad: torch.Tensor) -> None:
        bt, hkv, c, width, B, _ = self.shape
        acc.index_add_(0, self.flat, grad.reshape(bt * hkv * c * width, B, grad.shape[-1]))

    def scores(self, qc, kg, scale, bias) -> torch.Tensor:
        """qc [Bt, Hkv, c, G*B, D], kg [Bt, Hkv, c, W*B, D], bias [Bt, Hkv, c, W] or None ->
        masked logits [Bt, Hkv, c, G, B, W*B]."""
        bt, hkv, c, width, B, G = self.shape
        s = torch.matmul(qc, kg.transpose(-1, -2)).mul_(scale)  # (Bt, Hkv, c, G*B, W*B)
        if bias is not None:  # one logit offset per listed block, for all its keys and all G*B rows
            s = s.view(bt, hkv, c, G * B, width, B).add_(bias[:, :, :, None, :, None].to(s.dtype))
        return s.view(bt, hkv, c, G, B, width * B).masked_fill_(~self.allowed, -math.inf)


def _sparse_chunk(batch: int, kv_heads: int, groups: int, width: int, block_size: int, dim: int) -> int:
    """Query blocks per chunk (as ``ssa_kernels.attention.auto_chunk_blocks``): gathered k/v plus three
    score-sized fp32 temporaries within CHUNK_BYTES."""
    per_block = 4 * batch * kv_heads * width * block_size * (2 * dim + 3 * groups * block_size)
    return max(1, CHUNK_BYTES // max(1, per_block))


def _as_blocks(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """[Bt, Hkv, L, D] (L a multiple of the block) -> [Bt*Hkv*nbl, B, D], a view."""
    return x.reshape(-1, block_size, x.shape[-1])


class _SparseRing(torch.autograd.Function):
    @staticmethod
    @_without_autocast
    def forward(ctx, q, k, v, bias, indices, doc, ring: Ring, block_size: int, scale: float):
        # q [Bt, Hq, L, D], k/v [Bt, Hkv, L, D]; indices/bias [Bt, Hkv, L/B, S] for our query blocks
        bt, hq, length, d = q.shape
        hkv, nbl, B = k.shape[1], indices.shape[2], block_size
        G, cb = hq // hkv, nbl // 2
        acc = _acc(q)
        out = torch.zeros(bt, hq, length, d, dtype=acc, device=q.device)
        lse = torch.full((bt, hq, length), -math.inf, dtype=acc, device=q.device)
        qidx = ring.token_index(ring.rank, length, q.device)
        doc_q = doc[:, qidx]

        def step(j: int, kv: torch.Tensor) -> None:
            vis = _visiting(indices, ring, j, cb)
            if vis is None:  # none of our query blocks lists a block of rank j's
                return
            slot, local = vis
            kidx = ring.token_index(j, length, q.device)
            kb, vb = _as_blocks(kv[0].to(acc), B), _as_blocks(kv[1].to(acc), B)
            bias_v = bias.gather(-1, slot) if bias is not None else None
            chunk = _sparse_chunk(bt, hkv, G, slot.shape[-1], B, d)
            for b0 in range(0, nbl, chunk):
                b1 = min(nbl, b0 + chunk)
                t0, t1 = b0 * B, b1 * B
                st = _SparseStep(local, b0, b1, B, qidx, kidx, doc_q, doc[:, kidx], G)
                qc = _heads_to_groups(q[:, :, t0:t1].to(acc), hkv, b1 - b0, B)  # (Bt, Hkv, c, G*B, D)
                s = st.scores(qc, st.gather(kb), scale, bias_v[:, :, b0:b1] if bias_v is not None else None)
                lse_c = torch.logsumexp(s, dim=-1)  # (Bt, Hkv, c, G, B)
                p = s.sub_(torch.where(torch.isfinite(lse_c), lse_c, 0.0)[..., None]).exp_()
                o = torch.matmul(p.view(*qc.shape[:4], -1), st.gather(vb))  # (Bt, Hkv, c, G*B, D)
                lse_h = _groups_to_heads(lse_c.reshape(bt, hkv, b1 - b0, G * B), G)  # (Bt, Hq, c*B)
                _merge(out[:, :, t0:t1], lse[:, :, t0:t1], _groups_to_heads(o, G), lse_h)

        _rotate(ring, torch.stack([k, v]), step)
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, bias, indices, doc, out, lse)
        ctx.ring, ctx.block_size, ctx.scale = ring, block_size, scale
        return out

    @staticmethod
    @_without_autocast
    def backward(ctx, grad_out):
        q, k, v, bias, indices, doc, out, lse = ctx.saved_tensors
        ring, B, scale = ctx.ring, ctx.block_size, ctx.scale
        bt, hq, length, d = q.shape
        hkv, nbl = k.shape[1], indices.shape[2]
        G, cb = hq // hkv, nbl // 2
        acc = _acc(q)
        qidx = ring.token_index(ring.rank, length, q.device)
        doc_q = doc[:, qidx]
        delta = (grad_out.to(acc) * out.to(acc)).sum(-1, keepdim=True)  # (Bt, Hq, L, 1)
        dq = torch.zeros(q.shape, dtype=acc, device=q.device)
        dbias = torch.zeros(indices.shape, dtype=acc, device=q.device) if bias is not None else None

        def step(j: int, kv: torch.Tensor, dkv: torch.Tensor) -> None:
            vis = _visiting(indices, ring, j, cb)
            if vis is None:
                return
            slot, local = vis
            kidx = ring.token_index(j, length, q.device)
            kb, vb = _as_blocks(kv[0].to(acc), B), _as_blocks(kv[1].to(acc), B)
            dkb, dvb = _as_blocks(dkv[0], B), _as_blocks(dkv[1], B)  # views: index_add_ writes through
            bias_v = bias.gather(-1, slot) if bias is not None else None
            chunk = _sparse_chunk(bt, hkv, G, slot.shape[-1], B, d)
            for b0 in range(0, nbl, chunk):
                b1 = min(nbl, b0 + chunk)
                c, t0, t1 = b1 - b0, b0 * B, b1 * B
                st = _SparseStep(local, b0, b1, B, qidx, kidx, doc_q, doc[:, kidx], G)
                qc, do_c = (_heads_to_groups(x[:, :, t0:t1].to(acc), hkv, c, B) for x in (q, grad_out))
                kg, vg = st.gather(kb), st.gather(vb)
                s = st.scores(qc, kg, scale, bias_v[:, :, b0:b1] if bias_v is not None else None)
                lse_c = _heads_to_groups(lse[:, :, t0:t1, None], hkv, c, B).view(bt, hkv, c, G, B, 1)
                p = s.sub_(torch.where(torch.isfinite(lse_c), lse_c, 0.0)).exp_().view(*qc.shape[:4], -1)
                st.scatter_add(dvb, torch.matmul(p.transpose(-1, -2), do_c))  # sums the G heads
                ds = (
                    torch.matmul(do_c, vg.transpose(-1, -2))
                    .sub_(_heads_to_groups(delta[:, :, t0:t1], hkv, c, B))
                    .mul_(p)
                )  # (Bt, Hkv, c, G*B, W*B)
                del p
                if dbias is not None:  # d(block offset) = sum of dS over its tile, back to its list slot
                    width = slot.shape[-1]
                    tile = ds.view(bt, hkv, c, G * B, width, B).sum(dim=(3, 5))  # (Bt, Hkv, c, W)
                    dbias[:, :, b0:b1].scatter_add_(-1, slot[:, :, b0:b1], tile)
                dq[:, :, t0:t1] += _groups_to_heads(torch.matmul(ds, kg).mul_(scale), G)
                st.scatter_add(dkb, torch.matmul(ds.transpose(-1, -2), qc).mul_(scale))

        dkv = torch.zeros((2, *k.shape), dtype=acc, device=k.device)
        dkv = _rotate_with_grads(ring, torch.stack([k, v]), dkv, step)
        dbias = dbias.to(bias.dtype) if dbias is not None and ctx.needs_input_grad[3] else None
        return dq.to(q.dtype), dkv[0].to(k.dtype), dkv[1].to(v.dtype), dbias, None, None, None, None, None


def sparse_ring_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    indices: torch.Tensor,
    block_size: int,
    ring: Ring,
    doc_ids: torch.Tensor | None = None,
    scale: float | None = None,
    block_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """SSA's block-sparse attention around the ring: ``ssa_kernels.attention.sparse_attention`` of the
    whole row, for this rank's zigzag shard.

    q [Bt, Hq, L, D], k, v [Bt, Hkv, L, D] this rank's two chunks (L = T / cp, each chunk whole blocks);
    indices [Bt, Hkv, L / B, S] int64, the global key blocks listed for our query blocks (-1 padding);
    block_bias [Bt, Hkv, L / B, S] or None (differentiable); doc_ids [Bt, T] global. Returns [Bt, Hq, L, D]."""
    if q.shape[2] % (2 * block_size):
        raise ValueError(f"a ring shard holds two chunks of whole blocks of {block_size}; got {q.shape[2]} tokens")
    doc = _docs(doc_ids, q.shape[0], q.shape[2] * ring.size, q.device)
    scale = float(scale if scale is not None else q.shape[-1] ** -0.5)
    return _SparseRing.apply(q, k, v, block_bias, indices, doc, ring, block_size, scale)


def ssa_ring_attention(module, q, k, v, doc, scale, hidden, ctx: RingContext, q_means=None) -> torch.Tensor:
    """SSA of one layer around the ring: select from all-gathered block summaries (module docstring),
    then :func:`sparse_ring_attention`. q [B, Hq', L, D], k/v [B, Hkv', L, D] (a head shard under
    Ulysses) -> [B, Hq', L, D]. ``q_means`` [B, Hkv', L/B, D]: the attention router's block-mean queries
    over whole GQA groups when Ulysses repeated the kv heads (``parallel.ulysses.group_query_means``)."""
    cfg = ssa_config_of(module.config)
    if selection_rule_of(module.config) != "block":
        raise ParallelError("parallel=ring trains SSA with the block selection rule (config.ssa['rule']='block')")
    if cfg.router == "oracle":  # the oracle's dense attention mass needs every key on one rank
        raise ParallelError("attention.ssa.router=oracle is a one-process diagnostic: not under parallel=ring")
    if cfg.routing == "distill" and torch.is_grad_enabled():
        # the distillation target is dense attention over every key, which no ring rank holds
        raise ParallelError(
            "attention.ssa.routing=distill is not supported under parallel=ring: distil the router at a length "
            "that fits without ring (or under Ulysses), then train with routing=straight_through"
        )
    ring, B = ctx.ring, cfg.block_size
    hkv, length = k.shape[1], q.shape[2]
    T = length * ring.size
    st = cfg.routing == "straight_through" and torch.is_grad_enabled()
    if cfg.router == "learned":
        if ctx.ulysses is not None:  # the sp shard's pooled means, all-to-all'd to our heads (B, Hkv', L/B, d)
            local = _gathered_route(module, hidden, ctx.ulysses)
        elif hidden is not None and hasattr(module, "ssa_router"):
            local = module.ssa_router.pooled(hidden, B)
        else:
            raise ParallelError(
                f"layer {module.layer_idx}: attention.ssa.router=learned but the attention module has no ssa_router "
                "or got no layer input (build the model with ssa_kernels.hf.convert_to_ssa)"
            )
        route = PooledRoute(_RingGather.apply(local.q_mean, ring, 2), _RingGather.apply(local.k_mean, ring, 2), T)
        with torch.no_grad():
            sel = select_blocks_pooled(route, cfg, doc)
        st = st and (route.q_mean.requires_grad or route.k_mean.requires_grad)
    else:  # the attention's q and k route: the block summaries that select_blocks makes, gathered
        if q_means is None:
            q_means = query_summary(q, hkv, B)  # (B, Hkv', L/B, D)
        with torch.no_grad():
            q_sum = ring.gather(q_means.detach(), 2) / math.sqrt(q.shape[-1])  # (B, Hkv', nb, D)
            sums = ring.gather(_block_sums(k, B, torch.float64), 2)  # (B, Hkv', nb, D) fp64, as _key_prefix
            prefix = F.pad(sums.cumsum(-2), (0, 0, 1, 0))
            sel = _select(q_sum, lambda: prefix, T, cfg, doc)
        st = st and (q.requires_grad or k.requires_grad)
        # The straight-through routing gradient through the block means (single-process SSA adds the same
        # gradient inside the attention backward, ssa_kernels/attention/routing.py)
        route = PooledRoute(
            _RingGather.apply(q_means, ring, 2), _RingGather.apply(block_means(k, B), ring, 2), T
        ) if st else None  # fmt: skip
    mine = torch.cat([torch.arange(i * length // (2 * B), (i + 1) * length // (2 * B)) for i in ring.chunks(ring.rank)])
    mine = mine.to(q.device)  # our query blocks' global ids, (L/B,)
    bias = None
    if st:
        bias = _straight_through(routing_scores_pooled(route, sel.routed, cfg, doc), sel, cfg, doc, T)[:, :, mine]
    return sparse_ring_attention(q, k, v, sel.indices[:, :, mine], B, ring, doc, scale, bias)


# --- HF glue and the rung -------------------------------------------------------------------------


@dataclass
class RingContext:
    """What the ``"ring"`` attention function needs, kept on each attention module."""

    ring: Ring
    inner: str  # the model's attention implementation before the rung: dense math or ssa
    ulysses: UlyssesAttention | None  # Ulysses inside the node (parallel.sp > 1), else None


def ring_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """HF attention function. query [B, Hq, L/sp, D], key/value [B, Hkv, L/sp, D] (post-RoPE, this rank's
    tokens) -> ([B, L/sp, Hq, D], None)."""
    ctx: RingContext = module.ring
    if dropout:
        raise ParallelError("parallel=ring does not implement attention dropout (model attention_dropout=0)")
    u = ctx.ulysses
    q_means = None
    if u is not None:  # (B, H, L/sp, D) -> (B, H/sp, L, D): all of the ring rank's tokens, a head shard
        if ctx.inner == "ssa":  # kv heads repeated: routing means over whole GQA groups, taken before the split
            q_means = group_query_means(module, query, key.shape[1], u)
        if u.kv_repeat > 1:
            key = key.repeat_interleave(u.kv_repeat, dim=1)
            value = value.repeat_interleave(u.kv_repeat, dim=1)
        query, key, value = (_AllToAll.apply(x, u.group, u.sp, True) for x in (query, key, value))
    position_ids = kwargs.get("position_ids")
    doc = None
    if position_ids is not None:  # (B, L/sp) -> (B, L) -> (B, T) in natural order -> document ids
        pos = position_ids.expand(query.shape[0], -1)
        if u is not None:
            pos = _all_gather_positions(pos, u)
        doc = doc_ids_from_positions(ctx.ring.gather(pos, 1))
    if ctx.inner == "ssa":
        out = ssa_ring_attention(module, query, key, value, doc, scaling, kwargs.get("ssa_hidden"), ctx, q_means)
    else:
        out = ring_attention(query, key, value, ctx.ring, doc, scaling)
    if u is not None:  # (B, H/sp, L, D) -> (B, H, L/sp, D)
        out = _AllToAll.apply(out.contiguous(), u.group, u.sp, False)
    return out.transpose(1, 2).contiguous(), None  # (B, L/sp, Hq, D)


AttentionInterface.register("ring", ring_attention_forward)


class ZigzagSharded(SequenceSharded):
    """``SequenceSharded`` with the ring's placement: padded rows are cut into 2 x cp chunks, ring rank r
    keeps chunks r and 2cp-1-r, and its sp ranks split those once more (contiguous)."""

    rung = "ring"
    multiple_names = "2 x parallel.cp x parallel.sp x block"

    def __init__(self, module: nn.Module, dims: ParallelDims, multiple: int):
        super().__init__(module, dims.sp, dims.sp_rank, multiple)
        self.cp, self.cp_rank = dims.cp, dims.cp_rank

    def shard(self, x: torch.Tensor) -> torch.Tensor:
        return super().shard(zigzag_shard(x, self.cp, self.cp_rank, dim=1))


def apply_ring(model: nn.Module, dims: ParallelDims) -> nn.Module:
    """Switch ``model.lm``'s attention to ring attention (Ulysses inside the node when parallel.sp > 1)
    of its own implementation, shard rows in zigzag over the ring, and DDP the result over the world."""
    if dims.cp == 1:
        return apply_ulysses(model, dims)  # no ring: Ulysses (sp > 1) or data parallelism
    lm = model.lm
    config = lm.config
    inner = config._attn_implementation
    if inner not in INNER:
        raise ParallelError(f"parallel=ring wraps attention {INNER}, not {inner!r} (attention.impl)")
    if inner.startswith("flash"):
        log.warning("ring: %s runs as the ring's PyTorch attention (no flash kernel with LSE wired yet)", inner)
    u = None
    if dims.sp > 1:
        require_sp_within_node(dims, "ring")  # ulysses inside a node x ring across nodes
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        u = UlyssesAttention(dims.sp_group, dims.sp, inner, kv_repeat_for(heads, kv_heads, dims.sp))
    ctx = RingContext(Ring.of(dims.cp_group), inner, u)
    for _, attn in _attention_modules(lm):
        attn.ring = ctx
    lm.set_attn_implementation("ring")
    multiple = 2 * dims.cp * dims.sp * (ssa_config_of(config).block_size if inner == "ssa" else 1)
    log.info("ring: parallel.cp=%d x parallel.sp=%d, zigzag chunks of each row", dims.cp, dims.sp)
    return apply_ddp(ZigzagSharded(model, dims, multiple), dims)
