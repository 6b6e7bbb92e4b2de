"""Fast SSA decoding: the per-token rule of ``reference.py`` as three Triton launches over preallocated
buffers, with the current length read on the device, so one captured CUDA graph serves every token.

State (:class:`DecodePyramid`)
------------------------------
The fast selector's fp32 pyramid (``selector/fast.py``: node sums and sibling prefix sums, levels
concatenated finest first) laid out for a fixed *capacity* of blocks, so no offset moves as the sequence
grows, plus the running fp64 key and query sums of the current block, the scaled query summary, and per
batch row the length, document id, document start and routed-range start, all device tensors.

Invariant: a node's sum holds its *completed* children only, and the sibling prefix sum of a node is
written when its left sibling completes. The search reads whole nodes only below ``hi`` (before the local
window, so complete) and edges through sibling prefix sums of complete nodes, so partial nodes are never
read. A token therefore costs O(D * levels): its key joins the current block's fp64 sum (level 0 holds
that sum rounded to fp32), and when it completes a block, the completed nodes (the block, and each
ancestor whose last child it was) are added child after child to their parents, in the order
``selector.fast._pyramid`` uses, and their right siblings' prefix sums are written. ``from_prefill``
builds the same layout in O(T) from fp64 block sums (``_pyramid`` over the complete blocks).

Step (:func:`fast_decode_step`)
-------------------------------
1. ``_update_kernel``, one program per (batch row, kv head): writes the new k, v into the caches at the
   position read from ``length`` and updates the block sums, the pyramid and the scaled query summary
   (fp64 sums, as the reference). The last of its programs to finish (an arrival count) then does the row
   bookkeeping (``_commit``): the position ``pos``, the document id and start, the routed range's start of a
   new block, and the length (after every program has read the old length); ``COMMIT_IN_UPDATE = False``
   launches ``_commit_kernel`` for it instead.
2. ``_decode_select_kernel``, one program per (batch, kv head): the beam search of ``selector.fast`` (its
   jitted helpers, reused as they are) for the query block ``pos // block_size``, whose pyramid height is
   computed in the kernel, so the same launch serves every token; writes the union row
   sinks | routed | local window that ``decode_attention_triton`` reads.
3. ``decode_attention_triton`` (``triton.py``) with ``q_pos = pos`` and ``key_start = doc_start``.

Selections equal the reference's (``reference.ssa_decode_step``) except between candidates whose fp64
scores agree to ~1e-6 relative (fp32 node sums, as ``select_blocks_fast``).

:class:`SSADecodeGraph` captures one step in a CUDA graph (static input buffers; replay per token).
Limits: one token per step; a learned router's (route_q, route_k) are taken by :func:`fast_decode_step`
but not by the graph; ``topk_blocks >= 1`` and beams within ``selector.fast._MAX_SLOTS``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import triton
import triton.language as tl
from torch import Tensor

from ssa_kernels.config import SSAConfig
from ssa_kernels.decode.triton import decode_attention_triton
from ssa_kernels.selector.fast import (
    _INTERPRETED,
    _MAX_SLOTS,
    Tuning,
    _beams,
    _emit,
    _expand,
    _level_scores,
    _level_sizes,
    _pow2,
    _pyramid,
    _runs,
    _slots,
)
from ssa_kernels.selector.reference import _block_sums, _check_inputs, _num_blocks, routed_bounds

__all__ = ["DecodePyramid", "SSADecodeGraph", "fast_decode_step"]


@triton.jit
def _update_kernel(
    rq_ptr,
    rk_ptr,
    k_ptr,
    v_ptr,
    kc_ptr,
    vc_ptr,
    len_ptr,
    qacc_ptr,
    kacc_ptr,
    qs_ptr,
    lev_ptr,
    ps_ptr,
    off_ptr,
    cover_ptr,
    size_ptr,
    cnt_ptr,
    doc_id_ptr,
    pos_ptr,
    doc_ptr,
    dstart_ptr,
    lo_ptr,
    s_rq_b,
    s_rq_h,
    s_rq_d,
    s_rk_b,
    s_rk_h,
    s_rk_d,
    s_k_b,
    s_k_h,
    s_k_d,
    s_v_b,
    s_v_h,
    s_v_d,
    s_kc_b,
    s_kc_h,
    s_kc_t,
    s_kc_d,
    s_vc_b,
    s_vc_h,
    s_vc_t,
    s_vc_d,
    tot,
    HKV: tl.constexpr,
    RG: tl.constexpr,
    RD: tl.constexpr,
    RDP: tl.constexpr,
    D: tl.constexpr,
    DP: tl.constexpr,
    BLOCK: tl.constexpr,
    BR: tl.constexpr,
    LC: tl.constexpr,
    WRITE_KV: tl.constexpr,
    COMMIT: tl.constexpr,
    SINK: tl.constexpr,
    RP: tl.constexpr,
    HAS_DOC: tl.constexpr,
):
    """Take token t = length[b] of batch row b for kv head h (one program per (b, h)). rq [Bt, Hkv * RG, RD],
    rk [Bt, Hkv, RD]: what the selector scores; k, v [Bt, Hkv, D]: written into the caches at t when WRITE_KV.
    Every program reads its row's length; the rows' bookkeeping (``_commit``, which advances the lengths) must
    come after all of them: with COMMIT, the last program to finish does it (an arrival count at cnt_ptr, left
    zeroed), else ``_commit_kernel``, a launch of its own, after this one."""
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)  # 64-bit: (h * RG + g) * s_rq_h passes 2^31 at 1M tokens x 16 heads
    dr = tl.arange(0, RDP)
    rmask = dr < RD
    dd = tl.arange(0, DP)
    dmask = dd < D
    t = tl.load(len_ptr + b + dr * 0)  # (RDP,) all t: the token's position, as a vector over the head dim
    blk = t // BLOCK  # the token's block
    r = t % BLOCK  # its place in the block

    fresh = r == 0
    done = r == BLOCK - 1  # the token completes its block
    sqrt_d = tl.sqrt(tl.full([RDP], RD, tl.float64))
    count = ((r + 1) * RG).to(tl.float64)
    bh = b * HKV + h
    if WRITE_KV:
        kn = tl.load(k_ptr + b * s_k_b + h * s_k_h + dd * s_k_d, mask=dmask)
        vn = tl.load(v_ptr + b * s_v_b + h * s_v_h + dd * s_v_d, mask=dmask)
        td = tl.load(len_ptr + b + dd * 0)  # (DP,) all t
        tl.store(kc_ptr + b * s_kc_b + h * s_kc_h + td * s_kc_t + dd * s_kc_d, kn, mask=dmask)
        tl.store(vc_ptr + b * s_vc_b + h * s_vc_h + td * s_vc_t + dd * s_vc_d, vn, mask=dmask)
    # Query sum over the group in fp64, then over the block's tokens (the reference's order).
    qn = tl.zeros([RDP], tl.float64)
    for g in range(RG):
        qn += tl.load(rq_ptr + b * s_rq_b + (h * RG + g) * s_rq_h + dr * s_rq_d, mask=rmask, other=0.0).to(tl.float64)
    qa = tl.where(fresh, 0.0, tl.load(qacc_ptr + bh * RD + dr, mask=rmask, other=0.0)) + qn
    tl.store(qacc_ptr + bh * RD + dr, qa, mask=rmask)
    tl.store(qs_ptr + bh * RD + dr, (qa / count / sqrt_d).to(tl.float32), mask=rmask)
    kn = tl.load(rk_ptr + b * s_rk_b + h * s_rk_h + dr * s_rk_d, mask=rmask, other=0.0).to(tl.float64)
    ka = tl.where(fresh, 0.0, tl.load(kacc_ptr + bh * RD + dr, mask=rmask, other=0.0)) + kn
    tl.store(kacc_ptr + bh * RD + dr, ka, mask=rmask)
    val = ka.to(tl.float32)  # level 0: the block sum so far
    lev = lev_ptr + bh * tot * RD
    ps = ps_ptr + bh * tot * RD
    tl.store(lev + blk * RD + dr, val, mask=rmask)
    # Completed nodes, finest first: node n of level l completes with the block blk when blk is its last.
    for lvl in tl.static_range(LC):
        cover = tl.load(cover_ptr + lvl)
        node = blk // cover
        complete = done & ((blk + 1) % cover == 0)
        off = tl.load(off_ptr + lvl)
        # Right sibling's prefix sum (0 for a first child), as _pyramid: ps[n + 1] = ps[n] + x[n].
        nxt = node + 1
        has_nxt = complete & (nxt < tl.load(size_ptr + lvl))
        prev = tl.load(ps + (off + node) * RD + dr, mask=rmask & has_nxt, other=0.0)
        sib = tl.where(nxt % BR == 0, 0.0, prev + val)
        tl.store(ps + (off + nxt) * RD + dr, sib, mask=rmask & has_nxt)
        if lvl + 1 < LC:  # parent = its completed children added in order (starting from 0 + first)
            poff = tl.load(off_ptr + lvl + 1) + node // BR
            old = tl.load(lev + poff * RD + dr, mask=rmask & complete, other=0.0)
            val = tl.where(node % BR == 0, 0.0, old) + val
            tl.store(lev + poff * RD + dr, val, mask=rmask & complete)
    if COMMIT:
        # One launch fewer per decode step (a graphed step is a chain of short kernels, each costing its launch):
        # the classic counter (stores, barrier, a release-acquire count; the last arrival reads past L1).
        tl.debug_barrier()
        arrived = tl.atomic_add(cnt_ptr, 1, sem="acq_rel")
        if arrived == tl.num_programs(0) * tl.num_programs(1) - 1:
            _commit(doc_id_ptr, len_ptr, pos_ptr, doc_ptr, dstart_ptr, lo_ptr, tl.num_programs(0), BLOCK, SINK, RP,
                    HAS_DOC, ".cg")  # fmt: skip
            tl.store(cnt_ptr, 0)


@triton.jit
def _commit_kernel(
    doc_id_ptr, len_ptr, pos_ptr, doc_ptr, dstart_ptr, lo_ptr, n_rows, BLOCK: tl.constexpr, SINK: tl.constexpr,
    RP: tl.constexpr, HAS_DOC: tl.constexpr,
):  # fmt: skip
    """``_commit`` as a launch of its own (one program), after ``_update_kernel``."""
    _commit(doc_id_ptr, len_ptr, pos_ptr, doc_ptr, dstart_ptr, lo_ptr, n_rows, BLOCK, SINK, RP, HAS_DOC, "")


@triton.jit
def _commit(
    doc_id_ptr, len_ptr, pos_ptr, doc_ptr, dstart_ptr, lo_ptr, n_rows, BLOCK: tl.constexpr, SINK: tl.constexpr,
    RP: tl.constexpr, HAS_DOC: tl.constexpr, CACHE: tl.constexpr,
):  # fmt: skip
    """After the update of every (row, kv head), the bookkeeping of each batch row for its token t = length: the
    position ``pos`` (rows are equal), the document id and start of token t, the routed range's start of a block
    that t opens, and length t -> t + 1. One program, so every row scalar has one writer."""
    b = tl.arange(0, RP)
    ok = b < n_rows
    t = tl.load(len_ptr + b, mask=ok, other=0, cache_modifier=CACHE)
    tl.store(pos_ptr + b * 0, t, mask=b == 0)
    dstart = tl.load(dstart_ptr + b, mask=ok, other=0, cache_modifier=CACHE)
    if HAS_DOC:  # a document starts wherever the id changes (ids are nondecreasing)
        did = tl.load(doc_id_ptr + b, mask=ok, other=0, cache_modifier=CACHE).to(tl.int64)
        dstart = tl.where((t > 0) & (did != tl.load(doc_ptr + b, mask=ok, other=0, cache_modifier=CACHE)), t, dstart)
        tl.store(doc_ptr + b, did, mask=ok)
        tl.store(dstart_ptr + b, dstart, mask=ok)
    # A new block: its routed range starts at the document of its first token.
    tl.store(lo_ptr + b, tl.maximum(dstart // BLOCK, SINK), mask=ok & (t % BLOCK == 0))
    tl.store(len_ptr + b, t + 1, mask=ok)


@triton.jit
def _decode_select_kernel(
    qs_ptr,
    lev_ptr,
    ps_ptr,
    lo_ptr,
    pos_ptr,
    off_ptr,
    cover_ptr,
    keep_ptr,
    scratch_ptr,
    routed_ptr,
    scores_ptr,
    cand_ptr,
    idx_ptr,
    n_bh,
    hkv,
    tot,
    BLOCK: tl.constexpr,
    BR: tl.constexpr,
    BRP: tl.constexpr,
    MA: tl.constexpr,
    MB: tl.constexpr,
    SCR: tl.constexpr,
    TOPN: tl.constexpr,
    LC: tl.constexpr,
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
    UNROLL: tl.constexpr,
):
    """``selector.fast._select_kernel`` for the one query block ``pos // BLOCK`` of every (batch, kv head), its
    pyramid height computed here (keep_ptr: beams per level, one row of LC per height)."""
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    rmask = r < n_bh
    bh = tl.minimum(r, n_bh - 1)  # (ROWS,)
    b = bh // hkv
    blk = tl.load(pos_ptr) // BLOCK
    rows = blk + tl.zeros([ROWS], tl.int64)  # (ROWS,) the query block
    lo = tl.load(lo_ptr + b, mask=rmask, other=0)
    hi = rows - (LOCAL - 1)
    live = rmask & (lo < hi)
    q_row = qs_ptr + bh * D
    lev = lev_ptr + bh * tot * D
    ps = ps_ptr + bh * tot * D
    scratch = scratch_ptr + r * SCR
    # Pyramid height of a prefix of blk + 1 blocks (reference._num_levels).
    n = blk + 1
    levels = blk * 0 + 1
    for _ in tl.static_range(LC - 1):
        big = n > TOPN
        n = tl.where(big, (n + BR - 1) // BR, n)
        levels += big.to(tl.int64)
    keep_row = keep_ptr + (levels - 1) * LC

    node = tl.zeros([ROWS, MA], tl.int32) + tl.arange(0, MA)[None, :]
    score, order, n_valid = _level_scores(
        node, levels - 1, lo, hi, live, q_row, lev, ps, off_ptr, cover_ptr, BLOCK, D, DP, BDA, LP, UNROLL
    )
    cand = n_valid
    if levels == 1:
        _emit(node, score, order, n_valid, cand, rows, rmask, bh, routed_ptr, scores_ptr, cand_ptr, idx_ptr,
              TOPK, TP, SINK, LOCAL, S, SP, ROWS)  # fmt: skip
    else:
        # A compile-time trip count with a runtime guard: the height varies per token.
        for step in range(LC - 2):
            if step < levels - 2:
                level = levels - 2 - step
                keep = tl.load(keep_row + level + 1).to(tl.int32)
                node = _expand(order, node, n_valid, keep, scratch, MA, BR, BRP)
                score, order, n_valid = _level_scores(
                    node, level, lo, hi, live, q_row, lev, ps, off_ptr, cover_ptr, BLOCK, D, DP, BDA, LP, UNROLL
                )
                cand += n_valid
        # Leaf results under names of their own: an if/else may not change a variable's shape (MB != MA).
        leaf = _expand(order, node, n_valid, tl.load(keep_row + 1).to(tl.int32), scratch, MB, BR, BRP)
        leaf_score, leaf_order, leaf_valid = _level_scores(
            leaf, 0, lo, hi, live, q_row, lev, ps, off_ptr, cover_ptr, BLOCK, D, DP, BDB, LP, UNROLL
        )
        _emit(leaf, leaf_score, leaf_order, leaf_valid, cand + leaf_valid, rows, rmask, bh, routed_ptr, scores_ptr,
              cand_ptr, idx_ptr, TOPK, TP, SINK, LOCAL, S, SP, ROWS)  # fmt: skip


@dataclass
class DecodePyramid:
    """Device state of fast SSA decoding for one layer, sized for ``capacity`` tokens (see the module
    docstring). Every tensor keeps its address for the state's life: a captured graph reads them."""

    lev: Tensor  # [Bt * Hkv, tot, D] fp32 node sums (completed children), levels finest first
    ps: Tensor  # [Bt * Hkv, tot, D] fp32 sibling prefix sums
    key_acc: Tensor  # [Bt * Hkv, D] fp64: keys of the current block
    query_acc: Tensor  # [Bt * Hkv, D] fp64: queries of the current block, summed over the group
    query_summary: Tensor  # [Bt * Hkv, D] fp32: scaled mean query of the current block (the search's q)
    length: Tensor  # [Bt] int64: tokens seen (equal across rows)
    pos: Tensor  # [1] int64: position of the last token taken
    doc: Tensor  # [Bt] int64: document id of the last token
    doc_start: Tensor  # [Bt] int64: first token of that document
    block_lo: Tensor  # [Bt] int64: lo of the current block's routed range
    table: Tensor  # int64: level offsets | covers | sizes (LC each) | beams per height (LC x LC)
    indices: Tensor  # [Bt, Hkv, 1, S] int64: the last selection (sinks | routed | local window)
    routed: Tensor  # [Bt * Hkv, topk] int64
    routed_scores: Tensor  # [Bt * Hkv, topk] fp32
    candidates: Tensor  # [Bt * Hkv] int64
    scratch: Tensor  # [programs * rows, SCR] int32: the search's parent lists
    arrivals: Tensor  # [1] int32, zero between steps: the update's programs that finished (the last one commits)
    capacity: int  # tokens
    levels: int  # LC: levels of the pyramid over capacity / block_size blocks
    num_tokens: int  # host-side count of tokens taken (no sync: for the capacity check only)

    @classmethod
    def empty(
        cls,
        batch: int,
        kv_heads: int,
        head_dim: int,
        capacity: int,
        cfg: SSAConfig,
        device: torch.device | str | None = None,
    ) -> DecodePyramid:
        """State before the first token, for sequences of up to ``capacity`` tokens; head_dim: that of what the
        selector scores."""
        cfg.validate()
        if cfg.topk_blocks < 1:
            raise ValueError("fast decoding needs attention.topk_blocks >= 1 (use the reference for 0)")
        if cfg.node_score != "mean" or cfg.leaf_score != "mean":
            raise ValueError(
                "fast decoding scores blocks and nodes by their means: attention.node_score=bound and "
                "attention.leaf_score=bound run in DecodeState"
            )
        nb_cap = _num_blocks(capacity, cfg.block_size)
        sizes = _level_sizes(nb_cap, cfg)
        lc = len(sizes)
        ma, mb = _slots(_runs(nb_cap, cfg), cfg)
        if max(ma, mb) > _MAX_SLOTS:
            raise ValueError(f"beams too wide for the fast selector ({max(ma, mb)} slots > {_MAX_SLOTS})")
        offsets = [0]
        for n in sizes:
            offsets.append(offsets[-1] + n)
        keeps = []
        for height in range(1, lc + 1):
            keeps += _beams(height, cfg) + [0] * (lc - height)
        covers = [cfg.branching**level for level in range(lc)]
        table = torch.tensor(offsets[:lc] + covers + sizes + keeps, dtype=torch.int64).to(device)
        bh, d = batch * kv_heads, head_dim
        f32, f64, i64 = torch.float32, torch.float64, torch.int64
        rows = _select_rows(bh)
        programs = -(-bh // rows)
        scr = max(ma, mb) // _pow2(cfg.branching)
        s = cfg.sink_blocks + cfg.topk_blocks + cfg.local_blocks
        ids = torch.zeros(batch, dtype=i64, device=device)
        return cls(
            lev=torch.zeros(bh, offsets[-1], d, dtype=f32, device=device),
            ps=torch.zeros(bh, offsets[-1], d, dtype=f32, device=device),
            key_acc=torch.zeros(bh, d, dtype=f64, device=device),
            query_acc=torch.zeros(bh, d, dtype=f64, device=device),
            query_summary=torch.zeros(bh, d, dtype=f32, device=device),
            length=ids.clone(),
            pos=torch.zeros(1, dtype=i64, device=device),
            doc=ids.clone(),
            doc_start=ids.clone(),
            block_lo=ids + cfg.sink_blocks,
            table=table,
            indices=torch.full((batch, kv_heads, 1, s), -1, dtype=i64, device=device),
            routed=torch.full((bh, cfg.topk_blocks), -1, dtype=i64, device=device),
            routed_scores=torch.zeros(bh, cfg.topk_blocks, dtype=f32, device=device),
            candidates=torch.zeros(bh, dtype=i64, device=device),
            scratch=torch.zeros(programs * rows, scr, dtype=torch.int32, device=device),
            arrivals=torch.zeros(1, dtype=torch.int32, device=device),
            capacity=capacity,
            levels=lc,
            num_tokens=0,
        )

    @classmethod
    @torch.no_grad()
    def from_prefill(
        cls, q: Tensor, k: Tensor, cfg: SSAConfig, capacity: int, doc_ids: Tensor | None = None
    ) -> DecodePyramid:
        """State after a prompt (as ``reference.DecodeState.from_prefill``): q [Bt, Hq, T, D], k [Bt, Hkv, T, D]
        what the selector scores, doc_ids [Bt, T] nondecreasing or None. O(T * D): fp64 block sums of the
        complete blocks, the pyramid over them (``selector.fast._pyramid``), the sums of the partial block."""
        _check_inputs(q, k, cfg, doc_ids)
        bt, hq, seq_len, d = q.shape
        hkv, block = k.shape[1], cfg.block_size
        if seq_len >= capacity:
            raise ValueError(f"capacity={capacity} must exceed the prompt's {seq_len} tokens")
        state = cls.empty(bt, hkv, d, capacity, cfg, q.device)
        full = seq_len // block
        lc = state.levels
        offsets = state.table[:lc].tolist()
        sizes_cap = state.table[2 * lc : 3 * lc].tolist()
        # Nodes hold their completed children only (as decoding keeps them): level by level, the n_l = full // b^l
        # complete nodes of level l are added into their parents (the last one possibly partial), in
        # _pyramid's order; then the sibling prefix sum of each level's current node n_l.
        if full:
            state.lev[:, :full] = _block_sums(k[:, :, : full * block], block, torch.float64).flatten(0, 1).float()
        br = cfg.branching
        for level in range(lc):
            n = full // br**level
            sizes = [n, -(-n // br)] if level + 1 < lc else [n]
            _pyramid(state.lev, state.ps, offsets[level : level + 2], sizes, br)
            if n % br and n < sizes_cap[level]:
                cur = offsets[level] + n
                torch.add(state.ps[:, cur - 1], state.lev[:, cur - 1], out=state.ps[:, cur])
        part = seq_len - full * block
        if part:
            state.key_acc.copy_(k[:, :, full * block :].sum(2, dtype=torch.float64).flatten(0, 1))
            # (Bt, Hkv, G, r, D) -> (Bt, Hkv, r, D) -> (Bt, Hkv, D): heads first, then tokens in order
            qs = q[:, :, full * block :].reshape(bt, hkv, hq // hkv, part, d).sum(2, dtype=torch.float64)
            state.query_acc.copy_(qs.cumsum(2)[:, :, -1].flatten(0, 1))
            state.lev[:, full] = state.key_acc.float()
        state.length.fill_(seq_len)
        state.pos.fill_(seq_len - 1)
        if doc_ids is not None:
            doc_ids = doc_ids.to(device=q.device, dtype=torch.long).contiguous()
            state.doc.copy_(doc_ids[:, -1])
            state.doc_start.copy_(torch.searchsorted(doc_ids, doc_ids[:, -1:].contiguous()).squeeze(1))
        state.block_lo.copy_(routed_bounds(doc_ids, seq_len, cfg, q.device)[0][:, -1].expand(bt))
        state.num_tokens = seq_len
        return state

    def clone(self) -> DecodePyramid:
        return DecodePyramid(**{f.name: _copy(getattr(self, f.name)) for f in fields(self)})

    def copy_(self, other: DecodePyramid) -> DecodePyramid:
        """Overwrite this state's tensors in place (their addresses stay: a captured graph keeps working)."""
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if isinstance(mine, Tensor):
                mine.copy_(theirs)
        self.num_tokens = other.num_tokens
        return self


def _copy(x):
    return x.clone() if isinstance(x, Tensor) else x


# Launch parameters of the decode select kernel. Unlike training (thousands of query blocks: one warp per
# block, narrow gathers), a decode step has one row per (batch, kv head), a few programs in all, so latency
# rules: more warps and wider head-dim chunks per gather (scripts/profile_decode.py select=rows,warps,chunk).
# Earlier, the select kernel alone, 16 times on one token (H100, 1M, block 64; rows, warps, dim chunk): 1,1,4
# 43-44 us; 1,2,16 45; 1,4,16 40 us; 1,4,32 47; 1,8,32 45. Tried: a radix top-k (2^b thresholds per step instead of
# 32 halvings): as one [rows, slots, 2^b] compare 34 us but wrong selections on the GPU (triton 3.6; right in
# the interpreter), as 2^b - 1 separate row sums 68-94 us. Kept instead: halvings that stop once a midpoint has
# exactly k entries at or above it (selector.fast._top_mask): 43.0 -> 31.1 us, whole step 72.4 -> 59.4 us.
# Inside the graphed step (each token's select after the previous token's attention, as decoding runs it; H100,
# 1M, thirty-fourth session, scripts/profile_decode.py) the select kernel took longer than alone, and its head-dim
# chunks unrolled (SELECT_UNROLL) with 8 warps and chunks of 32 took least: block 128 44.0 us at 1,4,16 -> 27.5 us
# at 1,8,32 (1,4,32 29.4; 1,8,64 30.6); block 64 36.0 -> 31.3 us (1,4,32 41.4; 1,8,64 38.9).
SELECT_TUNING = Tuning(rows=1, num_warps=8, dim_chunk=32)
# The select kernel's head-dim chunks as straight-line code (every chunk's gather in flight at once, not one after
# the other). In the graphed step at 1M, H100, with 1,8,32: block 64 40.9 -> 31.7 us, block 128 even (27.7, 27.8);
# with 1,4,16 it was mixed (block 128 48.5 -> 44.0 us, block 64 34.3 -> 36.0 us).
SELECT_UNROLL = True
# The update's last program commits the rows' bookkeeping (True) or _commit_kernel does (False: one launch more).
# Even in the graphed step at 1M (H100, same call): block 128 52.0 against 53.0 us a step, block 64 55.3 against 54.3;
# the kernel itself took 1.2-1.4 us and made the update ~1.3 us shorter. (The same "last arrival" for the
# decode attention's merge, the row's last split program merging its partials instead of _combine_kernel, measured
# slower: 22.7 us against 14.1 + 2.2 at block 128, the one program's merge of 64 splits being the step's tail.)
COMMIT_IN_UPDATE = True


def _select_rows(n_bh: int) -> int:
    # interpreter: one wide tile (its cost is per operation); GPU: SELECT_TUNING.rows rows per program
    return min(64, _pow2(n_bh)) if _INTERPRETED else SELECT_TUNING.rows


def decode_update(
    state: DecodePyramid,
    route_q: Tensor,
    route_k: Tensor,
    cfg: SSAConfig,
    doc_id: Tensor | None = None,
    kv: tuple[Tensor, Tensor, Tensor, Tensor] | None = None,
) -> None:
    """Take one token: route_q [Bt, Hr, D] and route_k [Bt, Hkv, D] what the selector scores, doc_id [Bt] or
    None (the previous token's document); kv = (k_new, v_new [Bt, Hkv, Dv], k_cache, v_cache [Bt, Hkv, cap, Dv]):
    also write the token's key and value into the caches at its position. O(D * levels) per (batch, kv head)."""
    bt, hkv, rd = route_k.shape
    if state.num_tokens >= state.capacity:
        raise ValueError(f"DecodePyramid is full: capacity={state.capacity} tokens")
    lc = state.levels
    tab = state.table
    if kv is None:
        k_new = v_new = k_cache = v_cache = route_k.new_zeros(1, 1, 1, 1)
        d = 1
        s_k = s_v = (0, 0, 0)
        s_kc = s_vc = (0, 0, 0, 0)
    else:
        k_new, v_new, k_cache, v_cache = kv
        d = k_new.shape[-1]
        s_k, s_v, s_kc, s_vc = k_new.stride(), v_new.stride(), k_cache.stride(), v_cache.stride()
    doc = state.doc if doc_id is None else doc_id.to(device=state.doc.device, dtype=torch.long).contiguous()
    commit = dict(BLOCK=cfg.block_size, SINK=cfg.sink_blocks, RP=_pow2(bt), HAS_DOC=doc_id is not None)
    rows = (state.pos, state.doc, state.doc_start, state.block_lo)  # what the commit writes besides the length
    _update_kernel[(bt, hkv)](
        route_q, route_k, k_new, v_new, k_cache, v_cache, state.length,
        state.query_acc, state.key_acc, state.query_summary, state.lev, state.ps,
        tab, tab[lc:], tab[2 * lc :], state.arrivals, doc, *rows,
        *route_q.stride(), *route_k.stride(), *s_k, *s_v, *s_kc, *s_vc, state.lev.shape[1],
        HKV=hkv, RG=route_q.shape[1] // hkv, RD=rd, RDP=_pow2(rd), D=d, DP=_pow2(d), BR=cfg.branching, LC=lc,
        WRITE_KV=kv is not None, COMMIT=COMMIT_IN_UPDATE, **commit, num_warps=1,
    )  # fmt: skip
    if not COMMIT_IN_UPDATE:
        _commit_kernel[(1,)](doc, state.length, *rows, bt, **commit, num_warps=1)
    state.num_tokens += 1


def decode_select(state: DecodePyramid, cfg: SSAConfig) -> Tensor:
    """Blocks of the last token taken, per (batch, kv head): [Bt, Hkv, 1, S] int64 (state.indices; sinks |
    routed | local window, ascending, -1 padded), by the fast selector's beam search over the state's pyramid."""
    bt, hkv = state.indices.shape[:2]
    bh, d = state.query_summary.shape
    lc = state.levels
    nb_cap = _num_blocks(state.capacity, cfg.block_size)
    ma, mb = _slots(_runs(nb_cap, cfg), cfg)
    rows = _select_rows(bh)
    dp, brp = _pow2(d), _pow2(cfg.branching)
    bdb = dp if _INTERPRETED else min(dp, SELECT_TUNING.dim_chunk)
    bda = dp if _INTERPRETED else min(dp, max(bdb, bdb * mb // ma))
    s = state.indices.shape[-1]
    tab = state.table
    _decode_select_kernel[(-(-bh // rows),)](
        state.query_summary, state.lev, state.ps, state.block_lo, state.pos, tab, tab[lc:], tab[3 * lc :],
        state.scratch, state.routed, state.routed_scores, state.candidates, state.indices, bh, hkv,
        state.lev.shape[1],
        BLOCK=cfg.block_size, BR=cfg.branching, BRP=brp, MA=ma, MB=mb, SCR=state.scratch.shape[1],
        TOPN=max(cfg.top_nodes, 1), LC=lc, TOPK=cfg.topk_blocks, TP=_pow2(cfg.topk_blocks), SINK=cfg.sink_blocks,
        LOCAL=cfg.local_blocks, S=s, SP=_pow2(s), D=d, DP=dp, BDA=bda, BDB=bdb, LP=_pow2(lc), ROWS=rows,
        UNROLL=SELECT_UNROLL, num_warps=SELECT_TUNING.num_warps,
    )  # fmt: skip
    return state.indices


def fast_decode_step(
    q: Tensor,
    k_new: Tensor,
    v_new: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    state: DecodePyramid,
    cfg: SSAConfig,
    scale: float | None = None,
    doc_id: Tensor | None = None,
    route_q: Tensor | None = None,
    route_k: Tensor | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """One token of SSA decoding, all on the device (no host sync; capturable in a CUDA graph).

    q [Bt, Hq, 1, D] (post-RoPE), k_new, v_new [Bt, Hkv, D]: the new token, written into the preallocated
    caches k_cache, v_cache [Bt, Hkv, capacity, D] at its position (state.length); doc_id [Bt] or None;
    route_q [Bt, Hr, 1, d], route_k [Bt, Hkv, d]: a learned router's scores (None: q and k_new). Returns
    [Bt, Hq, 1, D] (``out`` when given): the reference ``ssa_decode_step``'s result.
    """
    bt, hq, one, d = q.shape
    hkv = k_cache.shape[1]
    if one != 1 or k_new.shape != (bt, hkv, d) or v_new.shape != k_new.shape or k_cache.shape[2] < state.capacity:
        raise ValueError(
            f"need q [Bt, Hq, 1, D], k_new = v_new = [Bt, Hkv, D] and caches of >= {state.capacity} tokens; got "
            f"q {tuple(q.shape)}, k_new {tuple(k_new.shape)}, v_new {tuple(v_new.shape)}, k_cache {tuple(k_cache.shape)}"
        )
    rq = q[:, :, 0] if route_q is None else route_q[:, :, 0]
    rk = k_new if route_k is None else route_k
    decode_update(state, rq, rk, cfg, doc_id, kv=(k_new, v_new, k_cache, v_cache))
    indices = decode_select(state, cfg)
    return decode_attention_triton(
        q, k_cache, v_cache, indices, state.pos, state.doc_start.view(bt, 1), cfg.block_size, scale, out=out
    )


class SSADecodeGraph:
    """One decode step captured in a CUDA graph, replayed for every token.

    ``graph = SSADecodeGraph(state, k_cache, v_cache, cfg, q_heads)``; then per token
    ``out = graph(q, k_new, v_new, doc_id)`` copies the inputs into static buffers, replays, and returns the
    static output buffer [Bt, Hq, 1, D] (overwritten by the next call: copy it to keep it). The state and
    caches advance in place exactly as :func:`fast_decode_step` advances them. Capture runs one warm-up step
    (compiling the kernels) and restores the state, so capturing takes no token. ``with_doc``: the step reads
    a document id per token (then pass doc_id on every call).
    """

    def __init__(
        self,
        state: DecodePyramid,
        k_cache: Tensor,
        v_cache: Tensor,
        cfg: SSAConfig,
        q_heads: int,
        scale: float | None = None,
        with_doc: bool = False,
    ) -> None:
        bt, hkv, _, d = k_cache.shape
        dev = k_cache.device
        self.state, self.cfg = state, cfg
        self.q = torch.zeros(bt, q_heads, 1, d, dtype=k_cache.dtype, device=dev)
        self.k_new = torch.zeros(bt, hkv, d, dtype=k_cache.dtype, device=dev)
        self.v_new = torch.zeros_like(self.k_new)
        self.doc_id = state.doc.clone() if with_doc else None
        self.out = torch.empty_like(self.q)

        def step() -> None:
            fast_decode_step(self.q, self.k_new, self.v_new, k_cache, v_cache, state, cfg, scale, self.doc_id,
                             out=self.out)  # fmt: skip

        saved = state.clone()
        stream = torch.cuda.Stream(dev)
        stream.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(stream):
            step()  # compile and autotune outside the capture
        torch.cuda.current_stream(dev).wait_stream(stream)
        state.copy_(saved)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            step()
        state.copy_(saved)  # capture records the launches; make sure no token was taken

    def __call__(self, q: Tensor, k_new: Tensor, v_new: Tensor, doc_id: Tensor | None = None) -> Tensor:
        if self.state.num_tokens >= self.state.capacity:
            raise ValueError(f"DecodePyramid is full: capacity={self.state.capacity} tokens")
        self.q.copy_(q)
        self.k_new.copy_(k_new)
        self.v_new.copy_(v_new)
        if self.doc_id is not None:
            if doc_id is None:
                raise ValueError("this graph was captured with_doc=True: pass doc_id [Bt] on every call")
            self.doc_id.copy_(doc_id)
        self.graph.replay()
        self.state.num_tokens += 1
        return self.out
