"""Triton flash-decoding for SSA: exact softmax attention of a few query rows over their listed key blocks.

Same semantics as the reference ``ssa_kernels.decode.reference._attend_rows``: q [Bt, Hq, R, D] holds R rows
(tokens at positions ``q_pos`` [R]) of every query head; k/v caches [Bt, Hkv, T, D]; ``indices``
[Bt, Hkv, R, S] lists each row's key blocks (-1 padded, shared by the G = Hq / Hkv heads of a kv head);
``key_start`` [Bt or 1, R] is the first key of each row's document. Row r sees key s iff s's block is
listed and ``key_start <= s <= q_pos[r]`` (and s < T).

Design (flash-decoding, split-K)
--------------------------------
Decoding one token reads (S x block_size) keys and values per kv head and does G x that many
multiply-adds: it is limited by memory bandwidth, and Bt x Hkv x R programs (8 at batch 1) would leave
most of a GPU idle. So:

1. ``_split_kernel``, grid (Bt * Hkv * R, splits): each program takes the G query heads of one kv head
   as the rows of one tile (padded to 16 rows, the smallest ``tl.dot`` M), walks its chunk of
   ``blocks_per_split`` listed blocks (loading each K/V block once for all G heads), and keeps an
   online softmax in base 2. It writes its partial output (normalised by its own sum) and its
   log2-sum-exp in fp32. With a single split it writes the final output directly.
2. ``_combine_kernel``, grid (Bt * Hkv * R, G): merges the partials of one row and head,
   ``out = sum_i 2^(lse_i - m) o_i / sum_i 2^(lse_i - m)``, and stores in q's dtype.

At 1M tokens with S = 129 blocks of 64, Hq = 32, Hkv = 8, D = 128, bf16, the data read are the
129 x 64 x 128 x 2 bytes of K and of V per kv head (17 MB in all); padding entries and keys outside
[key_start, q_pos] are masked loads, which read nothing.

Difference from the reference: a row that sees no key at all (not possible in SSA, whose diagonal block
is always listed) gets 0 here, where the reference's softmax gives NaN.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["decode_attention_triton"]

# Most splits per row (by default): bounds the combine's (splits, D) tile and the fp32 partials per row.
_MAX_SPLITS = 64
# Programs wanted per streaming multiprocessor: enough loads in flight to approach peak bandwidth.
_PROGRAMS_PER_SM = 4
# Warps of a split program (scripts/profile_decode.py awarps= times others; 8 measured slower than 4 at 1M).
SPLIT_WARPS = 4
# Where no GPU is queried (Triton's interpreter on CPU tensors): blocks per program.
_CPU_BLOCKS_PER_SPLIT = 4
# Test hook: fill the fp32 partials with this before the kernels run (NaN makes an unwritten one visible).
_WORKSPACE_FILL: float | None = None


@triton.jit
def _split_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    idx_ptr,
    pos_ptr,
    kstart_ptr,
    o_ptr,
    lse_ptr,
    sq_b,
    sq_h,
    sq_r,
    sq_d,
    sk_b,
    sk_h,
    sk_t,
    sk_d,
    sv_b,
    sv_h,
    sv_t,
    sv_d,
    si_b,
    si_h,
    si_r,
    si_s,
    sks_b,
    sks_r,
    so_b,
    so_h,
    so_r,
    so_s,
    so_g,
    so_d,
    hkv,
    rows,
    seq_len,
    n_listed,
    scale_log2,
    BPS: tl.constexpr,
    G: tl.constexpr,
    GP: tl.constexpr,
    BLOCK: tl.constexpr,
    BN: tl.constexpr,
    D: tl.constexpr,
    DP: tl.constexpr,
    WRITE_LSE: tl.constexpr,
    IEEE: tl.constexpr,
):
    pid = tl.program_id(0)  # over (b, h, r)
    split = tl.program_id(1)
    r = pid % rows
    h = (pid // rows) % hkv
    b = pid // (rows * hkv)
    # 64-bit offsets: a head of a 1M-token cache alone holds 2^27 elements.
    r64, h64, b64 = r.to(tl.int64), h.to(tl.int64), b.to(tl.int64)
    offs_g = tl.arange(0, GP)
    offs_d = tl.arange(0, DP)
    offs_n = tl.arange(0, BN)
    gmask = offs_g < G
    dmask = offs_d < D

    # (GP, DP): the G heads of kv head h at row r; padded rows are zeros and never stored.
    q_rows = b64 * sq_b + (h64 * G + offs_g)[:, None] * sq_h + r64 * sq_r + offs_d[None, :] * sq_d
    q = tl.load(q_ptr + q_rows, mask=gmask[:, None] & dmask[None, :], other=0.0)
    pos = tl.load(pos_ptr + r64).to(tl.int64)
    kstart = tl.load(kstart_ptr + b64 * sks_b + r64 * sks_r).to(tl.int64)

    m_i = tl.full([GP], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([GP], dtype=tl.float32)
    acc = tl.zeros([GP, DP], dtype=tl.float32)
    s_begin = split * BPS
    idx_row = idx_ptr + b64 * si_b + h64 * si_h + r64 * si_r
    k_head = k_ptr + b64 * sk_b + h64 * sk_h
    v_head = v_ptr + b64 * sv_b + h64 * sv_h
    # A compile-time trip count (the last split may run past S: it reads padding). Runtime loop bounds work on
    # GPUs, but Triton 3.6's interpreter cannot take one under NumPy 2.
    for j in range(0, BPS):
        s = s_begin + j
        blk = tl.load(idx_row + tl.minimum(s, n_listed - 1) * si_s).to(tl.int64)
        blk = tl.where(s < n_listed, blk, -1)
        kpos = blk * BLOCK + offs_n  # (BN,)
        # Padding (-1: kpos < 0), keys outside [key_start, q_pos] or past T: masked, so never read. (Vector
        # terms only: Triton's interpreter mis-types a scalar bool & a vector bool.)
        kmask = (kpos >= 0) & (offs_n < BLOCK) & (kpos >= kstart) & (kpos <= pos) & (kpos < seq_len)
        ld_mask = kmask[:, None] & dmask[None, :]
        k = tl.load(k_head + kpos[:, None] * sk_t + offs_d[None, :] * sk_d, mask=ld_mask, other=0.0)  # (BN, DP)
        v = tl.load(v_head + kpos[:, None] * sv_t + offs_d[None, :] * sv_d, mask=ld_mask, other=0.0)  # (BN, DP)
        if IEEE:  # fp32 input: no TF32 rounding, so fp32 results match the fp32 reference
            qk = tl.dot(q, tl.trans(k), input_precision="ieee")  # (GP, BN)
        else:
            qk = tl.dot(q, tl.trans(k))
        qk = tl.where(kmask[None, :], qk * scale_log2, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        # A row with nothing visible yet keeps m = -inf; shifting by 0 there avoids (-inf) - (-inf).
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(qk - m_safe[:, None])  # (GP, BN); masked keys give 0
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        if IEEE:
            pv = tl.dot(p, v, input_precision="ieee")
        else:
            pv = tl.dot(p.to(v.dtype), v)
        acc = acc * alpha[:, None] + pv  # (GP, DP)
        m_i = m_new

    seen = l_i > 0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]  # rows that saw nothing: 0
    o_rows = b64 * so_b + h64 * so_h + r64 * so_r + split.to(tl.int64) * so_s + offs_g[:, None] * so_g
    tl.store(o_ptr + o_rows + offs_d[None, :] * so_d, out, mask=gmask[:, None] & dmask[None, :])
    if WRITE_LSE:
        lse = tl.where(seen, m_i + tl.log2(tl.where(seen, l_i, 1.0)), float("-inf"))  # base 2
        n_splits = tl.num_programs(1)
        tl.store(lse_ptr + (pid.to(tl.int64) * n_splits + split) * G + offs_g, lse, mask=gmask)


@triton.jit
def _combine_kernel(
    po_ptr,
    lse_ptr,
    out_ptr,
    so_b,
    so_h,
    so_r,
    so_d,
    hkv,
    rows,
    n_splits,
    G: tl.constexpr,
    D: tl.constexpr,
    DP: tl.constexpr,
    SP: tl.constexpr,
):
    pid = tl.program_id(0)  # over (b, h, r)
    g = tl.program_id(1)
    r = pid % rows
    h = (pid // rows) % hkv
    b = pid // (rows * hkv)
    offs_s = tl.arange(0, SP)
    offs_d = tl.arange(0, DP)
    smask = offs_s < n_splits
    # Partials are [Bt * Hkv * R, splits, G, (D)] contiguous; one (SP, DP) tile holds all splits of this row and
    # head (no loop: Triton 3.6's interpreter cannot take a runtime loop bound under NumPy 2).
    part = (pid.to(tl.int64) * n_splits + offs_s) * G + g  # (SP,)
    lse = tl.load(lse_ptr + part, mask=smask, other=float("-inf"))  # (SP,) base 2
    m = tl.max(lse, 0)
    m = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp2(lse - m)  # (SP,): 0 for empty splits and padding
    po = tl.load(po_ptr + part[:, None] * D + offs_d[None, :], mask=smask[:, None] & (offs_d < D)[None, :], other=0.0)
    denom = tl.sum(w, 0)
    out = tl.sum(w[:, None] * po, 0) / tl.where(denom > 0, denom, 1.0)  # (DP,)
    dst = b.to(tl.int64) * so_b + (h.to(tl.int64) * G + g) * so_h + r.to(tl.int64) * so_r
    tl.store(out_ptr + dst + offs_d * so_d, out, mask=offs_d < D)


@functools.cache
def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _pick_blocks_per_split(q: Tensor, programs: int, n_listed: int) -> int:
    """Blocks per program: enough programs to keep every SM streaming, at most _MAX_SPLITS per row. (A compile-time
    constant of the kernel: a new value compiles a new variant, so few distinct values arise per model.)"""
    if q.device.type != "cuda":
        return _CPU_BLOCKS_PER_SPLIT
    sms = _num_sms(q.device)
    splits = min(_MAX_SPLITS, n_listed, max(1, -(-_PROGRAMS_PER_SM * sms // programs)))
    return -(-n_listed // splits)


def decode_attention_triton(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    indices: Tensor,
    q_pos: Tensor,
    key_start: Tensor,
    block_size: int,
    scale: float | None = None,
    *,
    out: Tensor | None = None,
    blocks_per_split: int | None = None,
) -> Tensor:
    """Exact softmax attention of query rows over their listed key blocks (the reference ``_attend_rows``).

    q [Bt, Hq, R, D] at positions q_pos [R] (int); k_cache, v_cache [Bt, Hkv, T, D] in q's dtype (fp16, bf16
    or fp32); indices [Bt, Hkv, R, S] int key blocks, -1 padded; key_start [Bt or 1, R] int. Row r sees key s
    iff s's block is listed and key_start <= s <= q_pos[r]. scale: None for 1/sqrt(D). out: optional
    [Bt, Hq, R, D] buffer in q's dtype to write into; blocks_per_split: listed blocks per program (None: fill
    the GPU). Returns [Bt, Hq, R, D] in q's dtype (``out`` when given); accumulates in fp32.
    """
    bt, hq, rows, d = q.shape
    if k_cache.dim() != 4 or v_cache.shape != k_cache.shape:
        raise ValueError(
            f"k_cache, v_cache must be equal [Bt, Hkv, T, D]; got {tuple(k_cache.shape)}, {tuple(v_cache.shape)}"
        )
    bk, hkv, seq_len, dk = k_cache.shape
    if (bk, dk) != (bt, d) or hq % hkv:
        raise ValueError(f"q {tuple(q.shape)} and k_cache {tuple(k_cache.shape)} need equal Bt, D and Hq % Hkv == 0")
    if (
        q.dtype not in (torch.float16, torch.bfloat16, torch.float32)
        or k_cache.dtype != q.dtype
        or v_cache.dtype != q.dtype
    ):
        raise TypeError(
            f"q, k_cache, v_cache must share one of fp16/bf16/fp32; got {q.dtype}, {k_cache.dtype}, {v_cache.dtype}"
        )
    if indices.dim() != 4 or indices.shape[:3] != (bt, hkv, rows) or indices.is_floating_point():
        raise ValueError(f"indices must be int [Bt, Hkv, R, S] = [{bt}, {hkv}, {rows}, S]; got {tuple(indices.shape)}")
    if (
        q_pos.shape != (rows,)
        or key_start.dim() != 2
        or key_start.shape[1] != rows
        or key_start.shape[0] not in (1, bt)
    ):
        raise ValueError(
            f"need q_pos [R={rows}] and key_start [Bt or 1, R]; got {tuple(q_pos.shape)}, {tuple(key_start.shape)}"
        )
    if out is None:
        out = torch.empty_like(q)
    elif out.shape != q.shape or out.dtype != q.dtype:
        raise ValueError(f"out must be {tuple(q.shape)} {q.dtype}; got {tuple(out.shape)} {out.dtype}")
    group, n_listed = hq // hkv, indices.shape[3]
    scale = d**-0.5 if scale is None else scale
    programs = bt * hkv * rows
    if n_listed == 0 or programs == 0:
        return out.zero_()
    bps = blocks_per_split or _pick_blocks_per_split(q, programs, n_listed)
    splits = -(-n_listed // bps)
    # Broadcast key_start over the batch by a zero stride, not a copy.
    sks_b = key_start.stride(0) if key_start.shape[0] == bt else 0
    meta = {
        "G": group,
        "GP": max(16, triton.next_power_of_2(group)),  # tl.dot needs M >= 16
        "BLOCK": block_size,
        "BN": max(16, triton.next_power_of_2(block_size)),
        "D": d,
        "DP": max(16, triton.next_power_of_2(d)),
        "IEEE": q.dtype == torch.float32,
        "BPS": bps,
        "num_warps": SPLIT_WARPS,
    }
    args = (hkv, rows, seq_len, n_listed, scale * math.log2(math.e))
    common = (q, k_cache, v_cache, indices, q_pos, key_start)
    strides = (*q.stride(), *k_cache.stride(), *v_cache.stride(), *indices.stride(), sks_b, key_start.stride(1))
    if splits == 1:
        # One program per row: write the output directly; (b, h, r, split, g, d) -> out[b, h*G + g, r, d].
        so = (out.stride(0), group * out.stride(1), out.stride(2), 0, out.stride(1), out.stride(3))
        _split_kernel[(programs, 1)](*common, out, out, *strides, *so, *args, WRITE_LSE=False, **meta)
        return out
    # (Bt * Hkv * R, splits, G, D) fp32 partial outputs and (Bt * Hkv * R, splits, G) base-2 log-sum-exps.
    alloc = torch.empty if _WORKSPACE_FILL is None else lambda *s, **kw: torch.full(s, _WORKSPACE_FILL, **kw)
    part_o = alloc(programs, splits, group, d, dtype=torch.float32, device=q.device)
    part_lse = alloc(programs, splits, group, dtype=torch.float32, device=q.device)
    so = (hkv * rows * splits * group * d, rows * splits * group * d, splits * group * d, group * d, d, 1)
    _split_kernel[(programs, splits)](*common, part_o, part_lse, *strides, *so, *args, WRITE_LSE=True, **meta)
    _combine_kernel[(programs, group)](
        part_o,
        part_lse,
        out,
        *out.stride(),
        hkv,
        rows,
        splits,
        G=group,
        D=d,
        DP=meta["DP"],
        SP=max(16, triton.next_power_of_2(splits)),
        num_warps=4,
    )
    return out
