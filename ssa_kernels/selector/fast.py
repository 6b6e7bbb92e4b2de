"""Fast SSA block selector: the reference beam search (``reference.py``) as two Triton kernels.

Same contract and the same search as :func:`ssa_kernels.selector.reference.select_blocks`; only the way
node scores are computed differs, so results agree up to fp32 rounding of near-ties (see below).

1. ``_pool_kernel`` reads q and k once: the scaled mean query of every (block, kv head) over its real tokens
   and the G heads of the group (fp32), and the fp32 sum of the keys of every block.
2. A pyramid of fp32 *node sums* is built from the block sums in torch (O(n), static: a node's sum does not
   depend on the query), level l node j summing blocks [j * b^l, (j + 1) * b^l) (b = branching), plus, per
   level, *sibling prefix sums*: PS_l[j] = sum of the level-l nodes before j under the same parent.
   Every sum is accumulated child after child in a fixed order, so a node's value does not depend on how
   long the sequence is (prefix consistency holds bit for bit, not only up to rounding).
3. ``_select_kernel``, launched once per run of query blocks of equal pyramid height (``row_levels``),
   one program per (batch x kv head, query block) on the GPU (``TUNING.rows`` query blocks, one warp: every
   reduction stays inside the warp, and many small programs hide the gathers' latency), walks the pyramid
   like the reference: score every top-level node overlapping the routed range [lo, hi), keep the
   ``beam`` best, score their children, ..., keep the ``topk_blocks`` best blocks, and writes ``routed``,
   ``routed_scores``, ``candidates`` and the union ``indices`` (sinks < routed < local window: the three
   sets are disjoint and ordered, so the union is a concatenation, no sort).

Scoring without fp64 prefix sums. The reference scores a node by its sum over the blocks inside [lo, hi),
read from fp64 prefix sums, divided by the nominal node size. A node is partial only if it holds lo or hi,
so at most two nodes per level and query block are partial. For a position p and a level l with cover
C = b^l, let E_l(p) = q . (sum of blocks [floor(p / C) * C, p)): the part of p's level-l node before p.
Splitting that range into whole level-j nodes (j < l) gives E_l(p) = sum_{j<l} q . PS_j[floor(p / b^j)],
l dot products. Then a node's visible sum, dotted with q, is

    (node holds hi ? E_l(hi) : q . NodeSum_l[node]) - (node holds lo ? E_l(lo) : 0),

i.e. whole nodes are read from the static pyramid and the two edges cost O(l) dot products each. All of it
in fp32 on magnitudes bounded by one node (no long prefix sums, whose cancellation is why the reference
needs fp64), so scores match the reference's to ~1e-6 relative; only candidates within that of each other
may swap. The search reads nothing after hi (no key after the query block, not even the sequence length,
since each query block searches the pyramid of its own prefix): causal, and equal to decoding up to
rounding.

Top-k without sorting. A row's candidates sit in slots in ascending node order (the top level's nodes in
order; below, the children of the kept parents, which are compacted in ascending order). The k best of a
row are found by bisection on the order-preserving int32 image of the fp32 scores (32 halvings, each a
compare and a row sum), then taken with ties to the leftmost slots, i.e. the smaller node index, exactly
the reference's stable-sort rule; a prefix sum gives each kept node its output slot. (A bitonic
``tl.topk`` on packed int64 keys did the same but unrolled into minutes of compilation.) Upper levels use
``top_nodes``-sized tiles, only the leaves ``beam_1 x branching`` slots.

Cost. With ``L = log_b(nb / top_nodes)`` levels, each query block scores at most
``top_nodes + L * beam * b`` nodes and gathers 2 L edge rows per level, each O(D); pooling and the pyramid
are O(n D). So selection is O(n log n) time (O(n log^2 n) counting the edge rows, a small share: L <= 5 at
4M tokens) and the extra memory is O(n D / block_size): query summaries, node sums and sibling prefix sums
in fp32 (about 2.3x the block sums, 0.2 GiB at 1M tokens of 8 kv heads, next to 0.3 GiB of outputs) and
an int32 parent list per query block; no tensor of nb x nb or T x nb elements exists. Pooling reads q and
k once, at about HBM bandwidth: at 1M tokens it is ~40% of the selector's time.

Bound scores (``node_score`` / ``leaf_score`` = bound). A node is scored by sum_d max(q_d min_d, q_d max_d) over
its blocks inside [lo, hi) (``_bound_scores``), min / max read from the reference's sparse tables
(``reference.block_bounds``, built in torch from the level-0 block sums, or over the blocks' token-key min / max
under leaf_score=bound): two overlapping runs of 2^j blocks, which for a whole node of a power-of-two branching
(every candidate but the row's edge nodes, and every block) are one run. So two row gathers a node (min, max;
four at an edge) where the mean reads one, and O(n log n) memory for the tables (2 x J x Bt x Hkv x nb x D fp32,
bf16 where exact: ``_tables``; J = log2 of the coarsest node's blocks + 1).
A partial node needs no edge terms: the tables bound any run of blocks.

Wide beams: a warp holds ``_MAX_SLOTS`` candidate slots of a row in its registers; a wider search (the issue-6
recipe's ``beam_widths=[64,256,512]`` needs 2,048 slots at 256K and 4,096 at 1M) gets a warp per ``_MAX_SLOTS``
slots (the same registers a thread), up to ``_MAX_WARPS``.

Falls back to the reference for fp64 inputs (exact oracle, gradcheck), ``topk_blocks == 0``, very wide
beams (a candidate set over ``_MAX_SLOTS * _MAX_WARPS``), and CPU tensors outside Triton's interpreter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from ssa_kernels.config import SSAConfig
from ssa_kernels.selector.reference import (
    PooledRoute,
    Selection,
    _block_token_counts,
    _check_inputs,
    _check_pooled,
    _num_blocks,
    _num_levels,
    beam_width,
    block_minmax,
    needs_bounds,
    routed_bounds,
    search_bounds,
    select_blocks,
    select_blocks_pooled,
)

__all__ = ["select_blocks_fast", "select_blocks_fast_pooled"]


@dataclass
class Tuning:
    """Launch parameters of the GPU kernels (the interpreter uses wide tiles: its cost is per operation).
    Defaults measured on H100 at 1M tokens (scripts/bench_selector.py --sweep): 1 row / 1 warp / chunk 4
    11.0 ms, 1/2/8 12.8 ms, 2/2/8 12.6 ms, 1/4/16 19.0 ms."""

    rows: int = 1  # query blocks per program of the select kernel
    num_warps: int = 1  # warps per program of the select kernel, per _MAX_SLOTS slots: reductions stay in a warp
    dim_chunk: int = 4  # head-dim elements per step of the leaves' gather (registers: rows x slots x chunk)
    pool_blocks: int = 1  # blocks per program of the pooling kernel
    pool_warps: int = 4
    # Bound tables in bf16 where exact (leaf_score=bound with bf16 keys: _tables); False: always fp32 (to time both)
    bound_tables_bf16: bool = True
    # Bound scores, power-of-two branching: whole nodes read one min and one max row and take a select and a multiply,
    # the row's two partial nodes scored apart once (_bound_scores); False: every candidate takes both runs.
    # (Measured on one H100 at 1M, both bounds, beams of 64: 64.5 ms against 84.1 ms without; docs/kernels.md.)
    bound_edges_apart: bool = True


TUNING = Tuning()
# Candidate slots per query block (pow2) that one warp's registers hold (the decode kernel's limit). The select kernel
# takes a warp per _MAX_SLOTS slots, up to _MAX_WARPS; beyond, the reference runs. Why wider at all: the issue-6
# recipe's beams [64,256,512] need 2,048 slots at 256K and 4,096 at 1M, which the PyTorch reference served in every
# layer's prefill (1.1 s a call at 1M with beams of 64 alone, 8 kv heads; a 1M sample of the recipe: ~40 s).
_MAX_SLOTS = 1024
_MAX_WARPS = 8

# Order key of "no candidate": below the order key of every fp32 score, -inf included (-2139095041).
_NONE: tl.constexpr = tl.constexpr(-(2**31))


def _pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


# --- kernels --------------------------------------------------------------------------------------------


@triton.jit
def _pool_kernel(
    x_ptr,
    out_ptr,
    seq_len,
    nb,
    hkv,
    out_bh_stride,
    stride_b,
    stride_h,
    stride_t,
    stride_d,
    scale,
    GROUP: tl.constexpr,
    BLOCK: tl.constexpr,
    BT: tl.constexpr,
    BLKS: tl.constexpr,
    D: tl.constexpr,
    DP: tl.constexpr,
    MEAN: tl.constexpr,
):
    """Sum (MEAN: scaled mean) over each block's real tokens and the GROUP heads of a kv head:
    x [Bt, Hkv * GROUP, T, D] (any strides) -> out [Bt * Hkv, nb, D] fp32 (row stride D, bh stride given)."""
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // hkv, bh % hkv
    blk = tl.program_id(0) * BLKS + tl.arange(0, BLKS)  # (BLKS,)
    dd = tl.arange(0, DP)
    dm = dd < D
    acc = tl.zeros([BLKS, DP], tl.float32)
    for g in range(GROUP):
        base = x_ptr + b * stride_b + (h * GROUP + g) * stride_h
        for t0 in tl.static_range(0, BLOCK, BT):
            tt = t0 + tl.arange(0, BT)  # token offset inside the block
            tok = blk[:, None].to(tl.int64) * BLOCK + tt[None, :]  # (BLKS, BT)
            ok = (tt[None, :] < BLOCK) & (tok < seq_len)
            ptr = base + tok[:, :, None] * stride_t + dd[None, None, :] * stride_d  # (BLKS, BT, DP)
            x = tl.load(ptr, mask=ok[:, :, None] & dm[None, None, :], other=0.0)
            acc += tl.sum(x.to(tl.float32), axis=1)
    if MEAN:
        count = tl.minimum(tl.maximum(seq_len - blk.to(tl.int64) * BLOCK, 1), BLOCK).to(tl.float32) * GROUP
        acc = acc * (scale / count[:, None])
    out = out_ptr + bh * out_bh_stride + blk[:, None].to(tl.int64) * D + dd[None, :]
    tl.store(out, acc, mask=(blk < nb)[:, None] & dm[None, :])


@triton.jit
def _order(score):
    """fp32 -> int32 with the same order (for finite and infinite values)."""
    bits = score.to(tl.int32, bitcast=True)
    return tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


@triton.jit
def _top_mask(order, k):
    """Mask of the k [ROWS] largest entries of each row of ``order`` [ROWS, M] (int32; _NONE = no
    candidate, never chosen; k <= the row's candidates), ties going to the leftmost entries.

    Bisection finds the k-th largest value t of each row (at most 32 halvings of the int32 range; each a
    compare and a row sum), then everything above t and the first (k - #above) entries equal to t
    are chosen. A row stops as soon as a midpoint has exactly k entries at or above it: those are the
    k largest, and lo = that midpoint chooses them (every entry equal to it, none above k). With distinct
    scores that comes after ~log2(candidates) + a few halvings rather than 32 (the decode step's search
    is a chain of these: its latency). Candidates lie in ascending node order along the row, so
    "leftmost" is "smaller node", the reference's tie rule. No sort: a few dozen instructions, where a
    bitonic top-k over int64 keys unrolls into tens of thousands (minutes of compilation)."""
    o = order.to(tl.int64)
    lo = tl.full(k.shape, -2147483647, tl.int64)  # count(o >= lo) = candidates >= k
    hi = tl.full(k.shape, 2147483648, tl.int64)  # count(o >= hi) = 0 < k (when k >= 1)
    while tl.max(hi - lo, axis=0) > 1:  # every row's interval halves or closes (hi = lo + 1): <= 32 rounds
        mid = (lo + hi) >> 1
        count = tl.sum((o >= mid[:, None]).to(tl.int32), axis=1)
        lo = tl.where(count >= k, mid, lo)
        hi = tl.where(count == k, mid + 1, tl.where(count >= k, hi, mid))  # exactly k at or above mid: done
    above = o > lo[:, None]
    tie = o == lo[:, None]
    need = k - tl.sum(above.to(tl.int32), axis=1)
    return above | (tie & (tl.cumsum(tie.to(tl.int32), axis=1) <= need[:, None]))


@triton.jit
def _edge_dot(p, level, q, live, ps, off_ptr, cover_ptr, D: tl.constexpr, DP: tl.constexpr, LP: tl.constexpr):
    """E_level(p) = q . (sum of blocks [p // C * C, p)), C = BR^level, [ROWS]: the blocks split into whole
    level-j nodes (j < level) before p under its level-(j+1) ancestor, i.e. PS_j[p // BR^j]. All ``level``
    rows are gathered at once ([ROWS, LP, DP]: one round of loads, not one per level and head-dim chunk)."""
    j = tl.arange(0, LP)
    below = j < level
    node = (
        tl.load(off_ptr + j, mask=below, other=0)[None, :]
        + p[:, None] // tl.load(cover_ptr + j, mask=below, other=1)[None, :]
    )
    dd = tl.arange(0, DP)
    ok = (live[:, None] & below[None, :])[:, :, None] & (dd < D)[None, None, :]
    rows = tl.load(ps[:, None, None] + node[:, :, None] * D + dd[None, None, :], mask=ok, other=0.0)  # (ROWS, LP, DP)
    return tl.sum(tl.sum(rows * q[:, None, :], axis=2), axis=1)


@triton.jit
def _visible(node, cover, lo, hi, live):
    """Which candidate nodes (int32 [ROWS, M], -1 = none) of ``cover`` blocks each overlap their row's routed
    range [lo, hi) (the rows [ROWS] that are ``live``)."""
    return (node >= 0) & (node * cover < hi[:, None]) & ((node + 1) * cover > lo[:, None]) & live[:, None]


@triton.jit
def _chunk_dot(d0, whole, live, q_row, lev, row, D: tl.constexpr, BD: tl.constexpr):
    """q . node sum over head dims d0 .. d0 + BD of the whole candidate nodes ``row`` [ROWS, M] -> [ROWS, M]."""
    dd = tl.max_contiguous(tl.multiple_of(d0 + tl.arange(0, BD), BD), BD)  # aligned: vector loads
    # A mask constant along the head dim (when BD divides D) lets each thread load 4 floats at once.
    dm = whole[:, :, None] if D % BD == 0 else whole[:, :, None] & (dd < D)[None, None, :]
    qv = tl.load(q_row[:, None] + dd[None, :], mask=live[:, None] & (dd < D)[None, :], other=0.0)  # (ROWS, BD)
    kv = tl.load(lev[:, None, None] + row[:, :, None] * D + dd[None, None, :], mask=dm, other=0.0)
    return tl.sum(kv * qv[:, None, :], axis=2)  # (ROWS, M, BD) -> (ROWS, M)


@triton.jit
def _level_scores(
    node,
    level,
    lo,
    hi,
    live,
    q_row,
    lev,
    ps,
    off_ptr,
    cover_ptr,
    BLOCK: tl.constexpr,
    D: tl.constexpr,
    DP: tl.constexpr,
    BD: tl.constexpr,
    LP: tl.constexpr,
    UNROLL: tl.constexpr,
):
    """Scores [ROWS, M] of candidate nodes ``node`` (int32, -1 = none) of one level, their order keys
    (int32, _NONE for nodes outside the routed range [lo, hi)) and the count of nodes in range. UNROLL: the
    head-dim chunks as straight-line code (the decode step, latency-bound; the training selector keeps a loop)."""
    cover = tl.load(cover_ptr + level)
    valid = _visible(node, cover, lo, hi, live)
    right = node == (hi // cover)[:, None]  # holds hi: partial (an overlapping node holding hi is never whole)
    left = node == (lo // cover)[:, None]  # holds lo: its part before lo is subtracted (0 when lo is aligned)
    whole = valid & ~right
    row = tl.load(off_ptr + level) + node  # (ROWS, M): rows in the concatenated levels
    dq = tl.arange(0, DP)
    q = tl.load(q_row[:, None] + dq[None, :], mask=live[:, None] & (dq < D)[None, :], other=0.0)  # (ROWS, DP)
    e_hi = _edge_dot(hi, level, q, live, ps, off_ptr, cover_ptr, D, DP, LP)
    e_lo = _edge_dot(lo, level, q, live, ps, off_ptr, cover_ptr, D, DP, LP)
    acc = tl.zeros(node.shape, tl.float32)
    if UNROLL:  # straight-line code: every chunk's gather can be in flight at once (one memory latency, not D / BD)
        for d0 in tl.static_range(0, D, BD):
            acc += _chunk_dot(d0, whole, live, q_row, lev, row, D, BD)
    else:
        for d0 in range(0, D, BD):
            acc += _chunk_dot(d0, whole, live, q_row, lev, row, D, BD)
    raw = tl.where(right, e_hi[:, None], acc) - tl.where(left, e_lo[:, None], 0.0)
    score = raw / (cover * BLOCK).to(tl.float32)  # nominal node size, as the reference
    order = tl.where(valid, _order(score), _NONE)
    return score, order, tl.sum(valid.to(tl.int32), axis=1)


@triton.jit
def _run_rows(start, end, bh, n_bh, cap, J: tl.constexpr):
    """Offsets (elements / D) of the two overlapping runs of 2^j table rows, j = floor(log2(end - start)), that cover
    the blocks [start, end): the first starts at start, the second ends at end - 1 (the same run for 2^j blocks)."""
    length = tl.maximum(end - start, 1)
    j = tl.zeros(start.shape, tl.int64)
    for lv in tl.static_range(1, J):
        j += (length >= (1 << lv)).to(tl.int64)  # floor(log2(length)), in integers as the reference
    last = end - (tl.full(start.shape, 1, tl.int64) << j)
    table = (j * n_bh + bh) * cap  # first row of this (level j, batch x kv head)
    return table + tl.minimum(tl.maximum(start, 0), cap - 1), table + tl.minimum(tl.maximum(last, 0), cap - 1)


@triton.jit
def _edge_bound(start, end, live, q_row, low_ptr, high_ptr, bh, n_bh, cap, D: tl.constexpr, BD: tl.constexpr,
                J: tl.constexpr):  # fmt: skip
    """Bound [ROWS] of the blocks [start, end) of each row (a partial node: two runs), summed over head-dim chunks
    of BD in the order of ``_bound_scores``'s loop, so it equals what that loop gives the same node."""
    row_a, row_b = _run_rows(start, end, bh, n_bh, cap, J)
    acc = tl.zeros(start.shape, tl.float32)
    for d0 in range(0, D, BD):
        dd = d0 + tl.arange(0, BD)
        m = live[:, None] & (dd < D)[None, :]
        qv = tl.load(q_row[:, None] + dd[None, :], mask=m, other=0.0)
        a, b = row_a[:, None] * D + dd[None, :], row_b[:, None] * D + dd[None, :]
        mn = tl.minimum(tl.load(low_ptr + a, mask=m, other=0.0).to(tl.float32),
                        tl.load(low_ptr + b, mask=m, other=0.0).to(tl.float32))  # fmt: skip
        mx = tl.maximum(tl.load(high_ptr + a, mask=m, other=0.0).to(tl.float32),
                        tl.load(high_ptr + b, mask=m, other=0.0).to(tl.float32))  # fmt: skip
        acc += tl.sum(tl.maximum(mn * qv, mx * qv), axis=1)
    return acc


@triton.jit
def _bound_scores(
    node,
    level,
    lo,
    hi,
    live,
    q_row,
    low_ptr,
    high_ptr,
    bh,
    n_bh,
    cap,
    cover_ptr,
    D: tl.constexpr,
    DP: tl.constexpr,
    BD: tl.constexpr,
    J: tl.constexpr,
    EDGES_APART: tl.constexpr,
):
    """``_level_scores`` with each node scored by the bound of its best visible block (``node_score`` /
    ``leaf_score`` bound, the reference's ``_bound_ranges``): sum over dims of max(q_d min_d, q_d max_d), min / max
    over the node's blocks inside [lo, hi), read from the sparse tables ``BlockBounds.low`` / ``high``
    ([J, Bt * Hkv, cap, D] fp32 or bf16, widened on load) as two overlapping runs of 2^j blocks, j =
    floor(log2(visible blocks)), and no division by the node's size (the bound is already per block).

    EDGES_APART (power-of-two branching): a whole node covers 2^j blocks, one run, so the loop over candidates reads
    one min row and one max row and takes max(q_d min_d, q_d max_d) = q_d (q_d >= 0 ? max_d : min_d), a select and
    a multiply: the same terms, summed in the same order. The row's (at most) two partial nodes, the one holding lo
    and the one holding hi, are scored apart, once per row (``_edge_bound``), as the mean's edge sums are. Otherwise
    (other branchings, or Tuning.bound_edges_apart off: the eighteenth session's kernel) every candidate takes both
    runs and the min / max / max form, a whole node's repeated run masked."""
    cover = tl.load(cover_ptr + level)
    valid = _visible(node, cover, lo, hi, live)
    acc = tl.zeros(node.shape, tl.float32)
    if EDGES_APART:
        right = node == (hi // cover)[:, None]  # holds hi: partial (an overlapping node holding hi is never whole)
        left = (node == (lo // cover)[:, None]) & ((lo % cover) != 0)[:, None]  # holds an unaligned lo: partial
        whole = valid & ~right & ~left
        row, _ = _run_rows(node.to(tl.int64) * cover, (node.to(tl.int64) + 1) * cover, bh[:, None], n_bh, cap, J)
        row = row * D
        for d0 in range(0, D, BD):
            dd = tl.max_contiguous(tl.multiple_of(d0 + tl.arange(0, BD), BD), BD)  # aligned: vector loads
            dm = whole[:, :, None] if D % BD == 0 else whole[:, :, None] & (dd < D)[None, None, :]
            qv = tl.load(q_row[:, None] + dd[None, :], mask=live[:, None] & (dd < D)[None, :], other=0.0)
            mn = tl.load(low_ptr + row[:, :, None] + dd[None, None, :], mask=dm, other=0.0).to(tl.float32)
            mx = tl.load(high_ptr + row[:, :, None] + dd[None, None, :], mask=dm, other=0.0).to(tl.float32)
            acc += tl.sum(tl.where(qv[:, None, :] >= 0, mx, mn) * qv[:, None, :], axis=2)  # (ROWS, M, BD) -> (ROWS, M)
        first_end = tl.minimum((lo // cover + 1) * cover, hi)  # the partial node holding lo: [lo, its end or hi)
        e_lo = _edge_bound(lo, first_end, live, q_row, low_ptr, high_ptr, bh, n_bh, cap, D, BD, J)
        e_hi = _edge_bound(tl.maximum(hi // cover * cover, lo), hi, live, q_row, low_ptr, high_ptr, bh, n_bh, cap, D,
                           BD, J)  # fmt: skip
        acc = tl.where(right, e_hi[:, None], tl.where(left, e_lo[:, None], acc))
    else:
        start = tl.maximum(node.to(tl.int64) * cover, lo[:, None])  # (ROWS, M) first visible block
        end = tl.minimum((node.to(tl.int64) + 1) * cover, hi[:, None])
        row_a, row_b = _run_rows(start, end, bh[:, None], n_bh, cap, J)
        row_a, row_b = row_a * D, row_b * D
        # A whole node (cover = 2^j visible blocks: every node but the row's edge nodes, and every block) is one
        # run: its second run is the first, so it is not gathered again (+inf / -inf, the identities of min / max).
        two = valid & (row_b != row_a)
        for d0 in range(0, D, BD):
            dd = d0 + tl.arange(0, BD)
            dm = valid[:, :, None] & (dd < D)[None, None, :]
            dm2 = two[:, :, None] & (dd < D)[None, None, :]
            qv = tl.load(q_row[:, None] + dd[None, :], mask=live[:, None] & (dd < D)[None, :], other=0.0)[:, None, :]
            a, b = row_a[:, :, None] + dd[None, None, :], row_b[:, :, None] + dd[None, None, :]
            mn = tl.minimum(
                tl.load(low_ptr + a, mask=dm, other=0.0).to(tl.float32),
                tl.load(low_ptr + b, mask=dm2, other=float("inf")).to(tl.float32),
            )
            mx = tl.maximum(
                tl.load(high_ptr + a, mask=dm, other=0.0).to(tl.float32),
                tl.load(high_ptr + b, mask=dm2, other=float("-inf")).to(tl.float32),
            )
            acc += tl.sum(tl.maximum(mn * qv, mx * qv), axis=2)  # (ROWS, M, BD) -> (ROWS, M)
    order = tl.where(valid, _order(acc), _NONE)
    return acc, order, tl.sum(valid.to(tl.int32), axis=1)


@triton.jit
def _scores(
    node, level, lo, hi, live, q_row, lev, ps, off_ptr, cover_ptr, low_ptr, high_ptr, bh, n_bh, cap,
    BLOCK: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, BD: tl.constexpr, LP: tl.constexpr,
    BOUND: tl.constexpr, J: tl.constexpr, EDGES_APART: tl.constexpr,
):  # fmt: skip
    """One level's scores, order keys and in-range counts: bounds (``_bound_scores``) or means (``_level_scores``)."""
    if BOUND:
        score, order, n_valid = _bound_scores(node, level, lo, hi, live, q_row, low_ptr, high_ptr, bh, n_bh, cap,
                                              cover_ptr, D, DP, BD, J, EDGES_APART)  # fmt: skip
    else:
        score, order, n_valid = _level_scores(node, level, lo, hi, live, q_row, lev, ps, off_ptr, cover_ptr, BLOCK,
                                              D, DP, BD, LP, False)  # fmt: skip
    return score, order, n_valid


@triton.jit
def _expand(order, node, n_valid, keep, scratch, MX: tl.constexpr, BR: tl.constexpr, BRP: tl.constexpr):
    """Children [ROWS, MX] (int32, -1 = none) of the ``keep`` best candidates (order, node) of each row.

    The kept parents are compacted in ascending order (a prefix sum gives each its slot) through the row's
    scratch list, then slot s holds child s % BRP of parent s // BRP (read straight from the list: no
    reshape, whose layout conversion would replicate the tile in every lane): ascending again."""
    k = tl.minimum(keep, n_valid)  # (ROWS,)
    chosen = _top_mask(order, k)
    pos = tl.cumsum(chosen.to(tl.int32), axis=1) - 1
    tl.store(scratch[:, None] + pos, node, mask=chosen)
    tl.debug_barrier()  # the list is read back by other threads
    slot = tl.arange(0, MX)[None, :]
    parent = tl.load(scratch[:, None] + slot // BRP, mask=slot // BRP < k[:, None], other=-1)
    tl.debug_barrier()  # read before the next level overwrites it
    return tl.where((parent >= 0) & (slot % BRP < BR), parent * BR + slot % BRP, -1)


@triton.jit
def _emit(
    node,
    score,
    order,
    n_valid,
    cand,
    rows,
    rmask,
    out_row,
    routed_ptr,
    scores_ptr,
    cand_ptr,
    idx_ptr,
    TOPK: tl.constexpr,
    TP: tl.constexpr,
    SINK: tl.constexpr,
    LOCAL: tl.constexpr,
    S: tl.constexpr,
    SP: tl.constexpr,
    ROWS: tl.constexpr,
):
    """Write the best TOPK blocks of the last level (ascending: their slot order, each at its rank among the
    chosen), their scores, the candidate count and the union row sinks | routed | local window."""
    n_routed = tl.minimum(n_valid, TOPK)  # (ROWS,)
    chosen = _top_mask(order, n_routed)
    pos = tl.cumsum(chosen.to(tl.int32), axis=1) - 1
    out = out_row[:, None] * TOPK
    tl.store(routed_ptr + out + pos, node, mask=chosen)
    tl.store(scores_ptr + out + pos, score, mask=chosen)
    col = tl.arange(0, TP)[None, :]
    pad = rmask[:, None] & (col >= n_routed[:, None]) & (col < TOPK)
    tl.store(routed_ptr + out + col, tl.full([ROWS, TP], -1, tl.int64), mask=pad)
    tl.store(scores_ptr + out + col, tl.full([ROWS, TP], float("-inf"), tl.float32), mask=pad)
    tl.store(cand_ptr + out_row, cand.to(tl.int64), mask=rmask)

    # indices = sinks outside the window, routed, local window, -1 padding: already ascending and disjoint
    # (sink blocks <= lo <= routed < hi = window start).
    start = rows[:, None] - (LOCAL - 1)  # window start, may be negative
    n_sink = tl.minimum(tl.maximum(start, 0), SINK)
    first = tl.maximum(start, 0)
    n_local = rows[:, None] - first + 1
    c = tl.arange(0, SP)[None, :].to(tl.int64)
    after = c - n_sink - n_routed[:, None]  # position inside the local window
    value = tl.where(c < n_sink, c, tl.where((after >= 0) & (after < n_local), first + after, -1))
    not_routed = (c < n_sink) | (after >= 0)
    idx_row = idx_ptr + out_row[:, None] * S
    tl.store(idx_row + c, value, mask=rmask[:, None] & (c < S) & not_routed)
    tl.store(idx_row + n_sink + pos, node, mask=chosen)


@triton.jit
def _select_kernel(
    qs_ptr,
    lev_ptr,
    ps_ptr,
    lo_ptr,
    off_ptr,
    cover_ptr,
    keep_ptr,
    scratch_ptr,
    routed_ptr,
    scores_ptr,
    cand_ptr,
    idx_ptr,
    low_ptr,
    high_ptr,
    cap,
    row0,
    row1,
    levels,
    nb,
    hkv,
    n_bh,
    tot,
    lo_bstride,
    BLOCK: tl.constexpr,
    BR: tl.constexpr,
    BRP: tl.constexpr,
    MA: tl.constexpr,
    MB: tl.constexpr,
    SCR: tl.constexpr,
    ONE_LEVEL: tl.constexpr,
    TOPK: tl.constexpr,
    TP: tl.constexpr,
    SINK: tl.constexpr,
    LOCAL: tl.constexpr,
    S: tl.constexpr,
    SP: tl.constexpr,
    D: tl.constexpr,
    DP: tl.constexpr,
    BDA: tl.constexpr,
    BDB: tl.constexpr,
    LP: tl.constexpr,
    ROWS: tl.constexpr,
    TOP_BOUND: tl.constexpr,
    NODE_BOUND: tl.constexpr,
    LEAF_BOUND: tl.constexpr,
    J: tl.constexpr,
    EDGES_APART: tl.constexpr,
):
    """Beam search of query blocks [row0, row1) (all of pyramid height ``levels``) of every (batch, kv head).

    A row's candidates lie in slots in ascending node order (the top level's nodes 0, 1, ...; below, the
    children of the kept parents, compacted in ascending order), so ties go to smaller nodes. The top and
    intermediate levels use MA slots (top_nodes, beam x branching), the leaves MB (beam_1 x branching)."""
    # Rows r of the launch are (bh, query block) = (r // n, row0 + r % n), n = row1 - row0: consecutive
    # programs share a (batch, kv head) and its pyramid in cache; a tile may straddle two (the interpreter's do).
    n_run = row1 - row0
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    rmask = r < n_run * n_bh
    bh = tl.minimum(r // n_run, n_bh - 1)  # (ROWS,)
    b = bh // hkv
    rows = row0 + r % n_run  # (ROWS,) query blocks
    lo = tl.load(lo_ptr + b * lo_bstride + rows, mask=rmask, other=0)  # (ROWS,) int64
    hi = rows - (LOCAL - 1)
    live = rmask & (lo < hi)  # rows with a non-empty routed range
    out_row = bh * nb + rows  # (ROWS,) row of the [Bt * Hkv, nb, ...] outputs
    q_row = qs_ptr + out_row * D
    lev = lev_ptr + bh * tot * D  # (ROWS,) pyramid of each row's (batch, kv head)
    ps = ps_ptr + bh * tot * D
    scratch = scratch_ptr + r * SCR  # (ROWS,) this row's parent list

    # Top level of the row's own pyramid: every node (at most top_nodes overlap [lo, hi)).
    node = tl.zeros([ROWS, MA], tl.int32) + tl.arange(0, MA)[None, :]  # int32: half the registers of int64
    score, order, n_valid = _scores(
        node, levels - 1, lo, hi, live, q_row, lev, ps, off_ptr, cover_ptr, low_ptr, high_ptr, bh, n_bh, cap,
        BLOCK, D, DP, BDA, LP, TOP_BOUND, J, EDGES_APART,
    )  # fmt: skip
    cand = n_valid
    if ONE_LEVEL:  # the top level is the leaf level
        _emit(node, score, order, n_valid, cand, rows, rmask, out_row, routed_ptr, scores_ptr, cand_ptr, idx_ptr,
              TOPK, TP, SINK, LOCAL, S, SP, ROWS)  # fmt: skip
    else:
        for step in range(levels - 2):  # intermediate levels levels-2 .. 1
            level = levels - 2 - step
            keep = tl.load(keep_ptr + level + 1).to(tl.int32)  # beam of the parent level
            node = _expand(order, node, n_valid, keep, scratch, MA, BR, BRP)
            score, order, n_valid = _scores(
                node, level, lo, hi, live, q_row, lev, ps, off_ptr, cover_ptr, low_ptr, high_ptr, bh, n_bh, cap,
                BLOCK, D, DP, BDA, LP, NODE_BOUND, J, EDGES_APART,
            )  # fmt: skip
            cand += n_valid
        leaf = _expand(order, node, n_valid, tl.load(keep_ptr + 1).to(tl.int32), scratch, MB, BR, BRP)
        score, order, n_valid = _scores(
            leaf, 0, lo, hi, live, q_row, lev, ps, off_ptr, cover_ptr, low_ptr, high_ptr, bh, n_bh, cap,
            BLOCK, D, DP, BDB, LP, LEAF_BOUND, J, EDGES_APART,
        )  # fmt: skip
        cand += n_valid
        _emit(leaf, score, order, n_valid, cand, rows, rmask, out_row, routed_ptr, scores_ptr, cand_ptr, idx_ptr,
              TOPK, TP, SINK, LOCAL, S, SP, ROWS)  # fmt: skip


# --- host side ------------------------------------------------------------------------------------------

# Whether the kernels were decorated under TRITON_INTERPRET=1 (decided once, at import): they then run on
# CPU tensors in Triton's interpreter.
_INTERPRETED = type(_select_kernel).__name__ == "InterpretedFunction"


def _pool(x: Tensor, hkv: int, block_size: int, out: Tensor, mean: bool) -> None:
    """Block sums (mean: scaled means over the group) of x [Bt, Hkv * G, T, D] into out [Bt * Hkv, >= nb, D]."""
    bt, heads, seq_len, d = x.shape
    nb = _num_blocks(seq_len, block_size)
    bt_chunk = min(_pow2(block_size), 64)
    # interpreter: a few wide programs (its cost is per operation), within Triton's 2^20 elements per tile
    blks = min(_pow2(nb), 2**20 // (bt_chunk * _pow2(d))) if _INTERPRETED else TUNING.pool_blocks
    _pool_kernel[(triton.cdiv(nb, blks), bt * hkv)](
        x, out, seq_len, nb, hkv, out.stride(0), *x.stride(), 1.0 / math.sqrt(d),
        GROUP=heads // hkv, BLOCK=block_size, BT=bt_chunk, BLKS=blks, D=d, DP=_pow2(d), MEAN=mean,
        num_warps=TUNING.pool_warps,
    )  # fmt: skip


def _level_sizes(nb: int, cfg: SSAConfig) -> list[int]:
    """Nodes per level of the pyramid over nb blocks, finest first (as ``key_pyramid``)."""
    sizes = [nb]
    while sizes[-1] > max(cfg.top_nodes, 1):
        sizes.append(-(-sizes[-1] // cfg.branching))
    return sizes


def _pyramid(lev: Tensor, ps: Tensor, offsets: list[int], sizes: list[int], br: int) -> None:
    """Fill node sums ``lev`` (level 0, the block sums, already there) and sibling prefix sums ``ps``
    [Bt * Hkv, sum(sizes), D], level l at rows offsets[l] .. offsets[l] + sizes[l]. Children are added one
    after the other, so every value has one fixed summation order, independent of the sequence length."""
    for level, n in enumerate(sizes):
        off = offsets[level]
        cur, pre = lev[:, off : off + n], ps[:, off : off + n]
        has_parent = level + 1 < len(sizes)
        nxt = lev[:, offsets[level + 1] : offsets[level + 1] + sizes[level + 1]] if has_parent else None
        for start, width, parents in ((0, n // br * br, slice(0, n // br)), (n // br * br, n % br, None)):
            if width == 0:
                continue
            # (BH, width, D) -> (BH, width / b', b', D): sibling groups (the last group may be short)
            group = br if parents is not None else width
            x = cur[:, start : start + width].unflatten(1, (-1, group))
            p = pre[:, start : start + width].unflatten(1, (-1, group))
            p[:, :, 0].zero_()
            for c in range(1, group):
                torch.add(p[:, :, c - 1], x[:, :, c - 1], out=p[:, :, c])
            if nxt is not None:
                dst = nxt[:, parents] if parents is not None else nxt[:, n // br : n // br + 1]
                torch.add(p[:, :, group - 1], x[:, :, group - 1], out=dst)


def _runs(nb: int, cfg: SSAConfig) -> list[tuple[int, int, int]]:
    """(first row, end row, pyramid height) of the runs of query blocks of equal ``row_levels``."""
    runs, r0 = [], 0
    levels, cap = 1, max(cfg.top_nodes, 1)  # rows i with i + 1 <= cap * b^(levels - 1) have <= levels levels
    while r0 < nb:
        r1 = min(nb, cap * cfg.branching ** (levels - 1))
        if r1 > r0:
            runs.append((r0, r1, levels))
        r0, levels = max(r0, r1), levels + 1
    assert all(_num_levels(r1, cfg) == lv and _num_levels(r0 + 1, cfg) == lv for r0, r1, lv in runs)
    return runs


def _beams(levels: int, cfg: SSAConfig) -> list[int]:
    """Beam width per level 0 .. levels - 1 (entry 0 unused) of a row with pyramid height ``levels``."""
    return [0] + [beam_width(level, levels, cfg) for level in range(1, levels)]


def _slots(runs: list[tuple[int, int, int]], cfg: SSAConfig) -> tuple[int, int]:
    """Candidate slots (pow2) that hold every run's candidates: MA for the top level (its nodes) and the
    intermediate levels (beam x padded branching children), MB for the leaves (beam_1 x padded branching)."""
    brp = _pow2(cfg.branching)
    ma, mb = 2, 2
    for _, r1, levels in runs:
        n = -(-r1 // cfg.branching ** (levels - 1))  # top-level nodes any row of the run can overlap
        ma = max(ma, n)
        beams = _beams(levels, cfg)
        for level in range(levels - 1, 0, -1):  # parents kept at `level`, their children one below
            keep = min(beams[level], n)
            n = keep * cfg.branching
            if level > 1:
                ma = max(ma, keep * brp)
            else:
                mb = max(mb, keep * brp)
    return _pow2(ma), _pow2(mb)


def _level_offsets(nb: int, cfg: SSAConfig) -> tuple[list[int], list[int]]:
    """Nodes per level of the pyramid over nb blocks and the level offsets (with the total last)."""
    sizes = _level_sizes(nb, cfg)
    offsets = [0]
    for n in sizes:
        offsets.append(offsets[-1] + n)
    return sizes, offsets


def _summaries(q: Tensor, k: Tensor, cfg: SSAConfig) -> tuple[Tensor, Tensor, Tensor, list[int], list[int]]:
    """Scaled mean queries [Bt * Hkv, nb, D], node sums and sibling prefix sums [Bt * Hkv, sum(sizes), D]
    (fp32, levels concatenated finest first), nodes per level and level offsets (with the total last)."""
    bt, _, seq_len, d = q.shape
    hkv = k.shape[1]
    nb = _num_blocks(seq_len, cfg.block_size)
    sizes, offsets = _level_offsets(nb, cfg)
    q_sum = torch.empty(bt * hkv, nb, d, dtype=torch.float32, device=q.device)
    lev = torch.empty(bt * hkv, offsets[-1], d, dtype=torch.float32, device=q.device)
    ps = torch.empty_like(lev)
    _pool(q, hkv, cfg.block_size, q_sum, mean=True)
    _pool(k, hkv, cfg.block_size, lev, mean=False)  # level 0 = block sums
    _pyramid(lev, ps, offsets, sizes, cfg.branching)
    return q_sum, lev, ps, sizes, offsets


def _pooled_summaries(route: PooledRoute, cfg: SSAConfig) -> tuple[Tensor, Tensor, Tensor, list[int], list[int]]:
    """:func:`_summaries` from block means (``PooledRoute``): no pooling kernel, the means are given."""
    bt, hkv, nb, d = route.q_mean.shape
    sizes, offsets = _level_offsets(nb, cfg)
    q_sum = (route.q_mean.float() / math.sqrt(d)).reshape(bt * hkv, nb, d)
    lev = torch.empty(bt * hkv, offsets[-1], d, dtype=torch.float32, device=q_sum.device)
    ps = torch.empty_like(lev)
    counts = _block_token_counts(route.seq_len, cfg.block_size, q_sum.device, torch.float32)  # (nb,)
    lev[:, :nb] = route.k_mean.float().reshape(bt * hkv, nb, d) * counts[:, None]  # level 0 = block sums
    _pyramid(lev, ps, offsets, sizes, cfg.branching)
    return q_sum, lev, ps, sizes, offsets


@torch.no_grad()
def select_blocks_fast(q: Tensor, k: Tensor, cfg: SSAConfig, doc_ids: Tensor | None = None) -> Selection:
    """:func:`ssa_kernels.selector.select_blocks` with Triton kernels (same arguments, same Selection).

    q: [Bt, Hq, T, D], k: [Bt, Hkv, T, D] (any strides), doc_ids: optional [Bt, T] nondecreasing. Scores
    are fp32 (routed_scores too); choices equal the reference's except between candidates whose scores
    agree to ~1e-6 relative. fp64 inputs, topk_blocks == 0, very wide beams and CPU tensors without
    TRITON_INTERPRET=1 run the reference.
    """
    _check_inputs(q, k, cfg, doc_ids)
    if _use_reference(q, k, q.shape[2], cfg):
        return select_blocks(q, k, cfg, doc_ids)
    leaf = lambda: block_minmax(k, cfg.block_size)  # noqa: E731 (made only under leaf_score=bound)
    summaries = _summaries(q, k, cfg)
    sel = _search(summaries, q.shape[0], k.shape[1], q.shape[2], cfg, doc_ids, leaf)
    if q.requires_grad or k.requires_grad:  # only a backward reuses them: inference makes no copies
        sel.means = _means(summaries, q.shape[0], k.shape[1], q.shape[2], cfg)
    return sel


def _means(summaries, bt: int, hkv: int, seq_len: int, cfg: SSAConfig) -> tuple[Tensor, Tensor]:
    """``Selection.means`` from ``_summaries``: (q̄, k̄) [Bt, Hkv, nb, D] fp32, what ``query_summary`` and
    ``block_means`` give (to fp32 rounding), read off the pooled tensors instead of q and k again."""
    q_sum, lev = summaries[:2]
    nb, d = _num_blocks(seq_len, cfg.block_size), q_sum.shape[-1]
    counts = _block_token_counts(seq_len, cfg.block_size, q_sum.device, torch.float32)  # (nb,)
    q_mean = (q_sum * math.sqrt(d)).view(bt, hkv, nb, d)  # q_sum: scaled by 1 / sqrt(d)
    k_mean = (lev[:, :nb] / counts[:, None]).view(bt, hkv, nb, d)  # level 0: block sums
    return q_mean, k_mean


@torch.no_grad()
def select_blocks_fast_pooled(route: PooledRoute, cfg: SSAConfig, doc_ids: Tensor | None = None) -> Selection:
    """:func:`ssa_kernels.selector.select_blocks_pooled` (block means given) with the Triton search."""
    _check_pooled(route, cfg, doc_ids)
    if _use_reference(route.q_mean, route.k_mean, route.seq_len, cfg):
        return select_blocks_pooled(route, cfg, doc_ids)
    bt, hkv = route.q_mean.shape[:2]
    leaf = lambda: (route.k_low, route.k_high)  # noqa: E731
    return _search(_pooled_summaries(route, cfg), bt, hkv, route.seq_len, cfg, doc_ids, leaf)


def _use_reference(q: Tensor, k: Tensor, seq_len: int, cfg: SSAConfig) -> bool:
    """fp64 (the exact oracle), nothing routed, very wide beams, or CPU tensors outside the interpreter."""
    ma, mb = _slots(_runs(_num_blocks(seq_len, cfg.block_size), cfg), cfg)
    on_device = q.is_cuda or _INTERPRETED
    reference = torch.float64 in (q.dtype, k.dtype) or cfg.topk_blocks == 0
    return reference or max(ma, mb) > _MAX_SLOTS * _MAX_WARPS or not on_device


def _tables(lev: Tensor, bt: int, hkv: int, nb: int, cfg: SSAConfig, leaf) -> tuple[Tensor, Tensor]:
    """The reference's sparse min / max tables (``search_bounds``: ``BlockBounds.low`` / ``high``, [J, Bt * Hkv, nb,
    D]) when the search scores bounds, from the block sums at the pyramid's level 0 (blocks' means; the
    blocks' token-key min / max ``leaf()`` under leaf_score=bound); two empty [1, 1, 1, D] tensors otherwise.

    fp32, or bf16 under leaf_score=bound when every leaf entry is a bf16 value (bf16 keys, as on the GPU): every
    table entry is then a min / max of them, so bf16 holds the same numbers exactly, in half the memory, half the
    build's traffic and half the search's gathers (the kernel widens them to fp32)."""
    d = lev.shape[-1]
    if not needs_bounds(cfg):  # mean scores: nothing to build (the kernel never reads these)
        empty = lev.new_zeros(1, 1, 1, d)
        return empty, empty
    sums = lev[:, :nb].view(bt, hkv, nb, d).double()
    prefix = torch.nn.functional.pad(sums.cumsum(-2), (0, 0, 1, 0))  # what search_bounds takes: fp64 prefix sums
    dtype = torch.float32
    if cfg.leaf_score == "bound" and TUNING.bound_tables_bf16:  # every entry is a min / max of the leaf values
        low, high = leaf_values = leaf()
        if all(torch.equal(x, x.bfloat16().float()) for x in (low, high)):  # bf16 keys (the GPU's): always
            dtype = torch.bfloat16
        leaf = lambda: leaf_values  # noqa: E731
    bounds = search_bounds(prefix, cfg, leaf, dtype=dtype)
    return bounds.low.flatten(1, 2).contiguous(), bounds.high.flatten(1, 2).contiguous()


def _shared_constants(
    cfg: SSAConfig,
    nb: int,
    d: int,
    ma: int,
    mb: int,
    j: int,
    tuning: Tuning | None = None,
    interpreted: bool | None = None,
) -> dict:
    """The constexprs (and num_warps) of ``_select_kernel`` common to every run of a search over nb blocks: what
    ``_search`` launches with, and what scripts/kernel_sass.py compiles. ma, mb: ``_slots``; j: the bound tables'
    depth (1 without them)."""
    tuning = TUNING if tuning is None else tuning
    interpreted = _INTERPRETED if interpreted is None else interpreted
    br, brp, dp = cfg.branching, _pow2(cfg.branching), _pow2(d)
    size = cfg.sink_blocks + cfg.topk_blocks + cfg.local_blocks
    # Head-dim chunk of the gathers: the leaves' [rows, MB, chunk] tile bounds registers; the upper levels'
    # tiles have fewer slots, so wider chunks. The interpreter takes whole rows (its cost is per operation).
    bdb = dp if interpreted else min(dp, tuning.dim_chunk)
    bda = dp if interpreted else min(dp, max(bdb, bdb * mb // ma))
    return dict(
        BLOCK=cfg.block_size, BR=br, BRP=brp, MA=ma, MB=mb, SCR=max(ma, mb) // brp, TOPK=cfg.topk_blocks,
        TP=_pow2(cfg.topk_blocks), SINK=cfg.sink_blocks, LOCAL=cfg.local_blocks, S=size, SP=_pow2(size), D=d, DP=dp,
        BDA=bda, BDB=bdb, LP=_pow2(len(_level_sizes(nb, cfg))), NODE_BOUND=cfg.node_score == "bound",
        LEAF_BOUND=cfg.leaf_score == "bound", J=j, EDGES_APART=tuning.bound_edges_apart and br == brp,
        num_warps=min(32, tuning.num_warps * max(1, max(ma, mb) // _MAX_SLOTS)),  # a warp per _MAX_SLOTS slots
    )  # fmt: skip


def _run_constants(
    cfg: SSAConfig, levels: int, n_rows: int, shared: dict, tuning: Tuning | None = None,
    interpreted: bool | None = None,
) -> dict:  # fmt: skip
    """The constexprs of one run's launch (rows of pyramid height ``levels``, n_rows of them over every (batch, kv
    head)): whether its top level is the leaves, whether that level scores bounds, and the rows per program."""
    tuning = TUNING if tuning is None else tuning
    interpreted = _INTERPRETED if interpreted is None else interpreted
    top_bound = (cfg.leaf_score if levels == 1 else cfg.node_score) == "bound"  # a one-level pyramid: leaves
    # interpreter: a few wide tiles, within Triton's 2^20 elements per tensor
    slots = max(shared["MA"], shared["MB"]) * shared["DP"]
    rows = max(1, min(1024, _pow2(n_rows), 2**20 // slots)) if interpreted else tuning.rows
    return dict(ONE_LEVEL=levels == 1, TOP_BOUND=top_bound, ROWS=rows)


def _search(summaries, bt: int, hkv: int, seq_len: int, cfg: SSAConfig, doc_ids: Tensor | None, leaf) -> Selection:
    """The beam-search launches over the pyramid of ``_summaries``: the Selection. ``leaf``: a callable giving the
    blocks' token-key (min, max) [Bt, Hkv, nb, D] (read only under leaf_score=bound)."""
    q_sum, lev, ps, sizes, offsets = summaries
    nb = _num_blocks(seq_len, cfg.block_size)
    d = q_sum.shape[-1]
    low, high = _tables(lev, bt, hkv, nb, cfg, leaf)
    runs = _runs(nb, cfg)
    ma, mb = _slots(runs, cfg)
    dev = q_sum.device
    topk, br = cfg.topk_blocks, cfg.branching
    tot = offsets[-1]

    lo, _ = routed_bounds(doc_ids, seq_len, cfg, dev)  # (Bt or 1, nb); hi = block - local_blocks + 1
    lo = lo.contiguous()
    num_levels = len(sizes)
    covers = [br**level for level in range(num_levels)]
    keeps = [_beams(levels, cfg) + [0] * (num_levels - levels) for _, _, levels in runs]
    # One small table: level offsets | covers | beams per run (int64; one host-to-device copy).
    table = torch.tensor(offsets[:num_levels] + covers + sum(keeps, []), dtype=torch.int64).to(dev)

    shared = _shared_constants(cfg, nb, d, ma, mb, low.shape[0])
    routed = torch.empty(bt, hkv, nb, topk, dtype=torch.long, device=dev)
    scores = torch.empty(bt, hkv, nb, topk, dtype=torch.float32, device=dev)
    candidates = torch.empty(bt, hkv, nb, dtype=torch.long, device=dev)
    indices = torch.empty(bt, hkv, nb, shared["S"], dtype=torch.long, device=dev)
    # Parent lists of the rows of one launch (int32; the largest run), the kernel's only scratch.
    scratch = torch.empty(max(r1 - r0 for r0, r1, _ in runs) * bt * hkv, shared["SCR"], dtype=torch.int32, device=dev)
    for run, (r0, r1, levels) in enumerate(runs):
        n_rows = (r1 - r0) * bt * hkv
        run_constants = _run_constants(cfg, levels, n_rows, shared)
        keep = table[2 * num_levels + run * num_levels :]
        _select_kernel[(triton.cdiv(n_rows, run_constants["ROWS"]),)](
            q_sum, lev, ps, lo, table, table[num_levels:], keep, scratch, routed, scores, candidates, indices,
            low, high, low.shape[2], r0, r1, levels, nb, hkv, bt * hkv, tot, 0 if lo.shape[0] == 1 else nb,
            **shared, **run_constants,
        )  # fmt: skip
    return Selection(indices, routed, scores, candidates)
