"""Triton forward and backward of SSA block-sparse attention (same semantics as ``reference.sparse_attention``).

Shapes: q [Bt, Hq, T, D], k/v [Bt, Hkv, T, D], Hq = G * Hkv; indices [Bt, Hkv, nb, S] (nb = ceil(T / B),
B = block_size), per query block the sorted key blocks, -1 padded at the end, shared by the G query heads
of a kv head. Query t sees key s iff block(s) is listed for block(t), s <= t and (with doc_ids) same document.

Design
------
Tile. The unit of work is (batch, kv head, query block i): its G query heads x B tokens are the G*B rows of
one tile, and each listed K/V block (B contiguous rows of D when k is [Bt, Hkv, T, D]) is loaded once for
all of them, which gives the GQA group FA2-like arithmetic intensity without repeating K/V. A program takes
BLOCK_M rows of that tile (BLOCK_M divides G*B; with several programs per tile they get adjacent program
ids, so the second reads the K/V blocks the first just pulled into L2; the forward takes all 256 rows of
G=4, B=64 in one program: 357 ms at 1M against 438 ms for two 128-row programs). Grid
(nb * G*B/BLOCK_M, Bt*Hkv), query blocks in descending order: late blocks list the most key blocks, so the
longest programs start first.

Forward (``_fwd_kernel``). fp32 online softmax in base 2 (log2(e) folded into the scale; the block bias is
scaled by log2(e) too), LSE written in natural log as the reference does. The loop bound is the number of
valid entries (padding is never visited). Because each row is sorted, the entries below the diagonal come
first: they run without any mask, and only the rest (the diagonal block, or a future block listed by
mistake) applies the causal mask. The document mask is a constexpr flag, applied to every block when
doc_ids is given. Rows with no visible key keep m = -inf; the exponent is taken against 0 instead, so they
end with l = 0 and get out = 0, lse = -inf, never NaN.
On Hopper (D = 128, B = 64 or 128, GQA groups of 4k) ``_forward`` and ``_backward`` hand the forward, the dQ pass
and the dK/dV pass to ``gluon.py``: the same loops, warp-specialised (a TMA load warp and two consumer warpgroups); at
1M and B = 64 the forward 274-288 ms against this forward's 324-332 ms, the backward 1,083-1,105 ms against
1,199-1,207 ms (B = 128: backward 944-957 ms against 1,075 ms with this dK/dV pass).

Backward.
- ``_delta_kernel``: delta = rowsum(dO * O) - dlse in fp32 (the lse gradient folds into delta since
  d lse / d s = P). Where the Gluon dQ pass runs (config key ``GL_DELTA``, on by default) it computes delta from
  its own dO and O tiles instead, and writes the dK/dV pass's row statistics (``gluon.row_stats``) with it.
- ``_dq_kernel``: the forward's grid and loop; P recomputed from lse, dS = P * (dP - delta),
  dq = scale * dS K written in q's dtype (one program owns its rows). The block-bias gradient of slot j is
  the sum of dS over the program's rows and the block's keys; with several programs per tile each writes
  its own fp32 partial and torch sums them. Padding slots get exact zeros.
- ``_dkdv_kernel``: key-block major through a CSR kv block -> (query block, slot) built in torch (a sort of the
  flattened entries by (key block, query block), binary searches of the sorted keys for the offsets), so each list is in
  ascending query-block order and the entries that need the causal mask (query block <= key block) are a
  prefix of it. A program holds one key block's K, V (in shared memory) and dk, dv (fp32 registers) and
  walks its list; each iteration takes BLOCK_M of the G*B query rows as the M side of the products
  (S = Q K^T, P^T and dS^T are transposed through shared memory for dv += P^T dO, dk += dS^T Q). The
  (entry, row slice) pairs form one flat loop, so Triton pipelines the next query rows' loads across entries.
  Balancing: the sink and other popular blocks are listed by almost every query block, so a list longer
  than L entries is cut into pieces of at most L, each its own program. L defaults to about
  (valid entries) / (8 x SMs): a list is only cut when it would be a large share of one SM's work, which
  bounds the fp32 partials to about 8 x SMs blocks (tens of MB), never a full-size fp32 dk/dv. A key block
  handled by one program writes dk/dv directly in the input dtype; the pieces of a split list write fp32
  partials that ``_reduce_kernel`` sums. Order (``KV_ORDER``): pieces longer than 8x the mean list first,
  longest first, then the rest in key-block order per head, so programs running together share the query
  rows of their overlapping local windows in L2 (measured 4% faster than pure longest-first at 1M).

Loads (TMA). At D = 128 the K/V blocks of the forward and the dQ pass and the q/dO slices of the dK/dV pass
(BLOCK_M <= B rows of one head) are bulk tensor copies from [Bt, H, T, D] descriptors with [1, 1, rows, D]
boxes (``_tensor_desc``: any strides with unit stride along D and 16-byte alignment, so HF's transposed
[Bt, T, H, D] layouts qualify too; Hopper; otherwise pointer loads). A box that crosses T is zero-filled. Measured at 1M: forward 361 -> 339 ms, dQ 477 -> 428 ms (with 3
stages), dK/dV 906 -> 766 ms (~2.9 TB/s of q/dO reads: the pointer loads left bandwidth unused).

Memory beyond q, k, v, out and their gradients: lse and delta ([Bt, Hq, T] fp32), the CSR (an int64 per
listed entry and the sort's keys), the block-bias partials and the split partials; no full-size fp32
dq/dk/dv (measured: 0.51 GiB at 1M tokens, 1.3% of q, k, v, out and their gradients).

Performance (H100, bf16, Bt=1, Hq=32, Hkv=8, D=128, B=64, sink + 16 local + 112 random routed blocks,
``scripts/bench_attention_kernel.py``; FLOPs = 4 D x visible (query, key) pairs x heads; pointer loads -> TMA):
  T=128K: forward 38.2 -> 36.1 ms (474 TFLOP/s), forward + backward 189 -> 163 ms (dq 58 -> 45, dk/dv 102 -> 85).
  T=1M:   forward 361 -> 339 ms (415 TFLOP/s), forward + backward 1727 -> 1535 ms (dq 477 -> 428 ms,
          dk/dv 906 -> 766 ms; the parts include delta, the dk/dv part the CSR build, 16 ms).
Each listed (key block, query block) pair of the dk/dv pass reads the G*B query rows of q and dO (128 KB at
G=4, B=64, D=128) for 64 keys of work, and randomly routed pairs rarely share them in L2 (17M pairs at 1M:
~2.2 TB, ~2.9 TB/s with TMA); yet at B=128 (half the bytes per FLOP) it takes the same time, so the bound is
the per-warpgroup product chain, not bandwidth (docs/kernels.md, 2026-12-02). Tried and measured slower at 1M: the
forward with lazy rescaling (rescale only when a row max grows by > 2^8: 391 vs 362 ms; the branch costs more
than the saved multiplies), deeper pipelines (forward 3-4 stages: no change; dk/dv with TMA and 3-4 stages:
1030 vs 773 ms, one program per SM instead of two), 128-row forward programs (438 ms), one fused backward
launch interleaving dq and dk/dv programs two per SM (1468 vs 1415 ms), and with TMA: two listed blocks per
forward step (one max and one rescale per 128 keys: 413 ms with 256 rows x 16 warps, 415 ms with 8 warps,
366 ms with 128 rows, vs 330 ms), 16-warp forward (340 ms) and dQ (256 rows: 481 vs 449 ms), 4-warp dQ
(868 ms), dk/dv with 32-row slices (1746 ms) or 8 warps (1426 ms), longest-first dk/dv order (815 vs
773 ms), and ``tl.range(warp_specialize=True)`` on the main loops (triton 3.6 on Hopper: no change).

128-key blocks (``block_size = 128``, Flex's own tile; configs in ``_config``). The forward and dQ loops walk a
listed block BLOCK_N keys at a time (a static inner loop over B / BLOCK_N sub-tiles; the block bias's gradient
is summed over them before its store): the forward takes 128 x 128 tiles, the dQ pass 64-key sub-tiles (128-key
ones need more shared memory than the 2 pipelined stages leave). The dK/dV pass holds 128 keys with 8 warps and
computes with the keys as the M side (``KT``: S^T = K Q^T, dP^T = V dO^T, so P^T and dS^T feed dV += P^T dO
and dK += dS^T Q without a transpose through shared memory); with the query rows as M side the same program
took 1,946 ms at 1M on an H200, with KT 752 ms. Scores are scaled and biased in one FMA inside exp2's
argument (the row max is taken on the raw scores), one multiply per score fewer than scaling first.

Test hooks: ``POISON = True`` fills every output and workspace with NaN before the kernels run, so an
element no kernel writes shows up; ``kv_split`` in ``_sparse_attention_triton`` forces a small L.
"""

from __future__ import annotations

import contextlib
import math

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from ssa_kernels.attention import gluon as _gluon
from ssa_kernels.attention.reference import check_inputs
from ssa_kernels.attention.routing import add_routing_grads

__all__ = ["sparse_attention_triton"]

# Test hook: allocate outputs and workspaces filled with NaN (an unwritten element then fails a test).
POISON = False
# Tuning hook (scripts/bench_attention_kernel.py): {"fwd" | "dq" | "dkdv": {"BLOCK_M", "num_warps", "num_stages"}}
CONFIG_OVERRIDE: dict[str, dict[str, int]] = {}


def parse_config_override(text: str) -> dict[str, dict[str, int]]:
    """ "fwd:num_stages=3 dkdv:TMA=1,BLOCK_M=64" -> {"fwd": {"num_stages": 3}, "dkdv": {"TMA": 1, "BLOCK_M": 64}}:
    the scripts' syntax for a CONFIG_OVERRIDE (bench_attention.py --kernel-config, bench_attention_kernel.py,
    kernel_sass.py)."""
    out: dict[str, dict[str, int]] = {}
    for spec in text.split():
        kind, kv = spec.split(":")
        out.setdefault(kind, {}).update({n: int(x) for n, x in (p.split("=") for p in kv.split(","))})
    return out


# Smallest automatic CSR piece length: shorter pieces only add partial buffers and reductions.
_MIN_SPLIT = 32
# CSR pieces wanted per SM at most (see module docstring).
_PIECES_PER_SM = 8
# Order of the dk/dv work items: "kb" = pieces longer than _LONG_FACTOR x the mean list first (longest first),
# then key-block order per head; "lpt" = all pieces longest first.
KV_ORDER = "kb"
_LONG_FACTOR = 8


# ----------------------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _masked_scores(
    q, k, t, kpos, doc_q, doc_k, CAUSAL: tl.constexpr, HAS_DOC: tl.constexpr, PREC: tl.constexpr,
    KEYS_FIRST: tl.constexpr,
):  # fmt: skip
    """Raw scores q.k of query rows at positions t [M] against keys at kpos [N], -inf where the key is in the
    row's future (CAUSAL: the diagonal block) or in another document (HAS_DOC: doc_q [M] vs doc_k [N]). [M, N],
    or [N, M] (k q^T) with KEYS_FIRST (the dK/dV pass: P^T and dS^T are then its products' A operands as
    computed). Callers take logits in log2 units as scores * qk_scale + the block's bias (``_bias_log2``) in one
    FMA inside exp2's argument (the row max is taken on the raw scores: qk_scale > 0), which saves a multiply
    per score. One definition of what a row sees for the forward, the dQ pass and the dK/dV pass."""
    if KEYS_FIRST:
        qk = tl.dot(k, tl.trans(q), input_precision=PREC)  # [N, M]
        keep = kpos[:, None] <= t[None, :]
        same_doc = doc_k[:, None] == doc_q[None, :]
    else:
        qk = tl.dot(q, tl.trans(k), input_precision=PREC)  # [M, N]
        keep = t[:, None] >= kpos[None, :]
        same_doc = doc_q[:, None] == doc_k[None, :]
    if CAUSAL:
        if HAS_DOC:
            keep = keep & same_doc
        qk = tl.where(keep, qk, float("-inf"))
    elif HAS_DOC:
        qk = tl.where(same_doc, qk, float("-inf"))
    return qk


@triton.jit
def _bias_log2(bias_ptr, HAS_BIAS: tl.constexpr):
    """The listed block's bias in log2 units (0 without a bias)."""
    if HAS_BIAS:
        return tl.load(bias_ptr).to(tl.float32) * 1.4426950408889634
    else:
        return 0.0


@triton.jit
def _load_kv(k_base, v_base, k_desc, v_desc, kv_b, kv_h, k0, kpos, sk_t, sv_t, T, BLOCK_N: tl.constexpr,
             D: tl.constexpr, TMA: tl.constexpr):  # fmt: skip
    """K, V [BLOCK_N, D] of the keys at positions kpos [BLOCK_N] = k0 + 0..BLOCK_N-1 of batch kv_b, kv head
    kv_h. TMA: bulk tensor copies from the [Bt, Hkv, T, D] descriptors (any strides: HF's transposed layouts
    too), zeros past T; otherwise pointer loads, zeros past T."""
    if TMA:
        k = k_desc.load([kv_b, kv_h, k0.to(tl.int32), 0]).reshape([BLOCK_N, D])
        v = v_desc.load([kv_b, kv_h, k0.to(tl.int32), 0]).reshape([BLOCK_N, D])
    else:
        offs_d = tl.arange(0, D)
        k_ok = kpos < T  # only the ragged last block has keys past T
        k = tl.load(k_base + kpos[:, None] * sk_t + offs_d[None, :], mask=k_ok[:, None], other=0.0)  # [N, D]
        v = tl.load(v_base + kpos[:, None] * sv_t + offs_d[None, :], mask=k_ok[:, None], other=0.0)  # [N, D]
    return k, v


@triton.jit
def _fwd_inner(
    acc,
    l_i,
    m_i,
    q,
    t,
    doc_q,
    idx_row,
    bias_row,
    k_base,
    v_base,
    k_desc,
    v_desc,
    kv_b,
    kv_h,
    doc_base,
    sk_t,
    sv_t,
    T,
    qk_scale,
    lo,
    hi,
    B: tl.constexpr,
    BLOCK_N: tl.constexpr,
    D: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_DOC: tl.constexpr,
    TMA: tl.constexpr,
    PREC: tl.constexpr,
):
    """Online softmax over listed entries [lo, hi) of one index row, BLOCK_N keys of a listed block at a time;
    CAUSAL applies s <= t."""
    offs_n = tl.arange(0, BLOCK_N)
    for e in range(lo, hi):
        kb = tl.load(idx_row + e)  # int64 key block
        b2 = _bias_log2(bias_row + e, HAS_BIAS)
        for sub in tl.static_range(B // BLOCK_N):
            k0 = kb * B + sub * BLOCK_N
            kpos = k0 + offs_n  # [N] key positions
            k, v = _load_kv(k_base, v_base, k_desc, v_desc, kv_b, kv_h, k0, kpos, sk_t, sv_t, T, BLOCK_N, D, TMA)
            doc_k = kpos  # placeholder, unused without documents
            if HAS_DOC:
                doc_k = tl.load(doc_base + kpos, mask=kpos < T, other=-1)
            sc = _masked_scores(q, k, t, kpos, doc_q, doc_k, CAUSAL, HAS_DOC, PREC, False)  # [M, N] raw
            m_new = tl.maximum(m_i, tl.max(sc, 1) * qk_scale + b2)
            # A row that has seen no key yet keeps m = -inf: exponentiate against 0 so -inf - -inf (NaN) never
            # occurs. (Conditional rescaling, FlashAttention-4's, measured 8% slower on an H100: docs/kernels.md.)
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(sc * qk_scale + (b2 - m_use)[:, None])  # [M, N]
            alpha = tl.math.exp2(m_i - m_use)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None]
            acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PREC)
            m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _fwd_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    k_desc,
    v_desc,
    o_ptr,
    lse_ptr,
    idx_ptr,
    cnt_ptr,
    nlo_ptr,
    bias_ptr,
    doc_ptr,
    sq_b,
    sq_h,
    sq_t,
    sk_b,
    sk_h,
    sk_t,
    sv_b,
    sv_h,
    sv_t,
    so_b,
    so_h,
    so_t,
    T,
    nb,
    S,
    Hkv,
    qk_scale,
    G: tl.constexpr,
    B: tl.constexpr,
    BLOCK_N: tl.constexpr,
    D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_DOC: tl.constexpr,
    TMA: tl.constexpr,
    PREC: tl.constexpr,
):
    N_SPLIT: tl.constexpr = G * B // BLOCK_M
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    i = nb - 1 - pid // N_SPLIT  # longest index rows (late query blocks) first
    b = bh // Hkv
    h = bh % Hkv
    rows = (pid % N_SPLIT) * BLOCK_M + tl.arange(0, BLOCK_M)  # rows of the G*B tile: head-major, then token
    t = i * B + rows % B  # [M] token of each row
    hq = h * G + rows // B  # [M] query head of each row
    row_ok = t < T
    offs_d = tl.arange(0, D)
    q_off = b.to(tl.int64) * sq_b + hq.to(tl.int64) * sq_h + t.to(tl.int64) * sq_t  # [M]
    q = tl.load(q_ptr + q_off[:, None] + offs_d[None, :], mask=row_ok[:, None], other=0.0)  # [M, D]

    sel = bh.to(tl.int64) * nb + i  # (b, h, i) in [Bt*Hkv*nb]
    n_valid = tl.load(cnt_ptr + sel)
    n_lo = tl.load(nlo_ptr + sel)  # entries below the diagonal: no mask needed
    idx_row = idx_ptr + sel * S
    bias_row = bias_ptr + sel * S
    k_base = k_ptr + b.to(tl.int64) * sk_b + h.to(tl.int64) * sk_h
    v_base = v_ptr + b.to(tl.int64) * sv_b + h.to(tl.int64) * sv_h
    doc_base = doc_ptr + b.to(tl.int64) * T
    if HAS_DOC:
        doc_q = tl.load(doc_base + t, mask=row_ok, other=-1)
    else:
        doc_q = t

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    acc, l_i, m_i = _fwd_inner(
        acc, l_i, m_i, q, t, doc_q, idx_row, bias_row, k_base, v_base, k_desc, v_desc, b, h, doc_base, sk_t,
        sv_t, T, qk_scale, 0, n_lo, B, BLOCK_N, D, False, HAS_BIAS, HAS_DOC, TMA, PREC,
    )  # fmt: skip
    acc, l_i, m_i = _fwd_inner(
        acc, l_i, m_i, q, t, doc_q, idx_row, bias_row, k_base, v_base, k_desc, v_desc, b, h, doc_base, sk_t,
        sv_t, T, qk_scale, n_lo, n_valid, B, BLOCK_N, D, True, HAS_BIAS, HAS_DOC, TMA, PREC,
    )  # fmt: skip

    empty = l_i == 0.0  # no visible key: out 0, lse -inf
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(tl.where(empty, 1.0, l_i))) * 0.6931471805599453)
    o_off = b.to(tl.int64) * so_b + hq.to(tl.int64) * so_h + t.to(tl.int64) * so_t
    tl.store(o_ptr + o_off[:, None] + offs_d[None, :], out.to(o_ptr.dtype.element_ty), mask=row_ok[:, None])
    lse_off = (b.to(tl.int64) * Hkv * G + hq) * T + t
    tl.store(lse_ptr + lse_off, lse, mask=row_ok)


# ----------------------------------------------------------------------------------------------------------
# Backward: delta, dq (+ block bias), dk/dv, reduction of split pieces
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _delta_kernel(
    o_ptr,
    do_ptr,
    dlse_ptr,
    delta_ptr,
    so_b,
    so_h,
    so_t,
    sdo_b,
    sdo_h,
    sdo_t,
    T,
    Hq,
    D: tl.constexpr,
    BLOCK_T: tl.constexpr,
    HAS_DLSE: tl.constexpr,
):
    bh = tl.program_id(1)
    b = bh // Hq
    h = bh % Hq
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    ok = t < T
    offs_d = tl.arange(0, D)
    o_off = b.to(tl.int64) * so_b + h.to(tl.int64) * so_h + t.to(tl.int64) * so_t
    do_off = b.to(tl.int64) * sdo_b + h.to(tl.int64) * sdo_h + t.to(tl.int64) * sdo_t
    o = tl.load(o_ptr + o_off[:, None] + offs_d[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
    do = tl.load(do_ptr + do_off[:, None] + offs_d[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
    delta = tl.sum(o * do, 1)  # [BLOCK_T]
    row = bh.to(tl.int64) * T + t
    if HAS_DLSE:
        delta -= tl.load(dlse_ptr + row, mask=ok, other=0.0)
    tl.store(delta_ptr + row, delta, mask=ok)


@triton.jit
def _dq_inner(
    dq,
    q,
    do,
    lse2,
    delta,
    t,
    doc_q,
    idx_row,
    bias_row,
    dbias_row,
    k_base,
    v_base,
    k_desc,
    v_desc,
    kv_b,
    kv_h,
    doc_base,
    sk_t,
    sv_t,
    T,
    qk_scale,
    lo,
    hi,
    B: tl.constexpr,
    BLOCK_N: tl.constexpr,
    D: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    WANT_DBIAS: tl.constexpr,
    HAS_DOC: tl.constexpr,
    TMA: tl.constexpr,
    PREC: tl.constexpr,
):
    offs_n = tl.arange(0, BLOCK_N)
    for e in range(lo, hi):
        kb = tl.load(idx_row + e)
        b2l = _bias_log2(bias_row + e, HAS_BIAS) - lse2  # [M]
        dbias = 0.0
        for sub in tl.static_range(B // BLOCK_N):
            k0 = kb * B + sub * BLOCK_N
            kpos = k0 + offs_n  # [N]
            k, v = _load_kv(k_base, v_base, k_desc, v_desc, kv_b, kv_h, k0, kpos, sk_t, sv_t, T, BLOCK_N, D, TMA)
            doc_k = kpos  # placeholder, unused without documents
            if HAS_DOC:
                doc_k = tl.load(doc_base + kpos, mask=kpos < T, other=-1)
            sc = _masked_scores(q, k, t, kpos, doc_q, doc_k, CAUSAL, HAS_DOC, PREC, False)  # [M, N] raw
            p = tl.math.exp2(sc * qk_scale + b2l[:, None])  # lse2 = +inf on empty/out-of-range rows: p = 0 there
            dp = tl.dot(do, tl.trans(v), input_precision=PREC)  # [M, N]
            ds = p * (dp - delta[:, None])  # dL/d(logit), natural units
            if WANT_DBIAS:
                dbias += tl.sum(tl.sum(ds, 1), 0)
            dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PREC)
        if WANT_DBIAS:
            tl.store(dbias_row + e, dbias)
    return dq


@triton.jit
def _dq_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    k_desc,
    v_desc,
    do_ptr,
    dq_ptr,
    lse_ptr,
    delta_ptr,
    idx_ptr,
    cnt_ptr,
    nlo_ptr,
    bias_ptr,
    dbias_ptr,
    doc_ptr,
    sq_b,
    sq_h,
    sq_t,
    sk_b,
    sk_h,
    sk_t,
    sv_b,
    sv_h,
    sv_t,
    sdo_b,
    sdo_h,
    sdo_t,
    sdq_b,
    sdq_h,
    sdq_t,
    T,
    nb,
    S,
    Hkv,
    n_sel,
    qk_scale,
    sm_scale,
    G: tl.constexpr,
    B: tl.constexpr,
    BLOCK_N: tl.constexpr,
    D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    S_P2: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    WANT_DBIAS: tl.constexpr,
    WANT_DQ: tl.constexpr,
    HAS_DOC: tl.constexpr,
    TMA: tl.constexpr,
    PREC: tl.constexpr,
):
    N_SPLIT: tl.constexpr = G * B // BLOCK_M
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    i = nb - 1 - pid // N_SPLIT
    ms = pid % N_SPLIT
    b = bh // Hkv
    h = bh % Hkv
    rows = ms * BLOCK_M + tl.arange(0, BLOCK_M)
    t = i * B + rows % B  # [M]
    hq = h * G + rows // B  # [M]
    row_ok = t < T
    offs_d = tl.arange(0, D)
    q_off = b.to(tl.int64) * sq_b + hq.to(tl.int64) * sq_h + t.to(tl.int64) * sq_t
    do_off = b.to(tl.int64) * sdo_b + hq.to(tl.int64) * sdo_h + t.to(tl.int64) * sdo_t
    q = tl.load(q_ptr + q_off[:, None] + offs_d[None, :], mask=row_ok[:, None], other=0.0)  # [M, D]
    do = tl.load(do_ptr + do_off[:, None] + offs_d[None, :], mask=row_ok[:, None], other=0.0)  # [M, D]
    lrow = (b.to(tl.int64) * Hkv * G + hq) * T + t
    lse = tl.load(lse_ptr + lrow, mask=row_ok, other=float("-inf"))
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
    delta = tl.load(delta_ptr + lrow, mask=row_ok, other=0.0)

    sel = bh.to(tl.int64) * nb + i
    n_valid = tl.load(cnt_ptr + sel)
    n_lo = tl.load(nlo_ptr + sel)
    idx_row = idx_ptr + sel * S
    bias_row = bias_ptr + sel * S
    dbias_row = dbias_ptr + (ms * n_sel + sel) * S  # this program's partial (one per row split)
    k_base = k_ptr + b.to(tl.int64) * sk_b + h.to(tl.int64) * sk_h
    v_base = v_ptr + b.to(tl.int64) * sv_b + h.to(tl.int64) * sv_h
    doc_base = doc_ptr + b.to(tl.int64) * T
    if HAS_DOC:
        doc_q = tl.load(doc_base + t, mask=row_ok, other=-1)
    else:
        doc_q = t

    dq = tl.zeros([BLOCK_M, D], tl.float32)
    dq = _dq_inner(
        dq, q, do, lse2, delta, t, doc_q, idx_row, bias_row, dbias_row, k_base, v_base, k_desc, v_desc, b, h,
        doc_base, sk_t, sv_t, T, qk_scale, 0, n_lo, B, BLOCK_N, D, False, HAS_BIAS, WANT_DBIAS, HAS_DOC, TMA, PREC,
    )  # fmt: skip
    dq = _dq_inner(
        dq, q, do, lse2, delta, t, doc_q, idx_row, bias_row, dbias_row, k_base, v_base, k_desc, v_desc, b, h,
        doc_base, sk_t, sv_t, T, qk_scale, n_lo, n_valid, B, BLOCK_N, D, True, HAS_BIAS, WANT_DBIAS, HAS_DOC, TMA, PREC,
    )  # fmt: skip
    if WANT_DBIAS:  # padding slots: exact zeros, as in the reference
        offs_s = tl.arange(0, S_P2)
        tl.store(dbias_row + offs_s, tl.zeros([S_P2], tl.float32), mask=(offs_s >= n_valid) & (offs_s < S))
    if WANT_DQ:
        dq_off = b.to(tl.int64) * sdq_b + hq.to(tl.int64) * sdq_h + t.to(tl.int64) * sdq_t
        tl.store(
            dq_ptr + dq_off[:, None] + offs_d[None, :],
            (dq * sm_scale).to(dq_ptr.dtype.element_ty),
            mask=row_ok[:, None],
        )


@triton.jit
def _dkdv_inner(
    dk,
    dv,
    k,
    v,
    kpos,
    doc_k,
    csr_ptr,
    sel0,
    h,
    q_base,
    do_base,
    q_desc,
    do_desc,
    q_b,
    lse_base,
    delta_base,
    bias_ptr,
    doc_base,
    sq_h,
    sq_t,
    sdo_h,
    sdo_t,
    T,
    S,
    qk_scale,
    lo,
    hi,
    G: tl.constexpr,
    B: tl.constexpr,
    D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_DOC: tl.constexpr,
    TMA: tl.constexpr,
    PREC: tl.constexpr,
    KT: tl.constexpr,
):
    """dk, dv [B, D] += contributions of CSR entries [lo, hi); one iteration = one BLOCK_M slice of the G*B rows."""
    N_SUB: tl.constexpr = G * B // BLOCK_M
    offs_d = tl.arange(0, D)
    for it in range(lo * N_SUB, hi * N_SUB):
        pos = tl.load(csr_ptr + it // N_SUB)  # flat position in indices: ((b*Hkv + h)*nb + i)*S + j
        i = (pos // S - sel0).to(tl.int32)  # query block
        rows = (it % N_SUB) * BLOCK_M + tl.arange(0, BLOCK_M)
        t = i * B + rows % B  # [M]
        hq = h * G + rows // B  # [M]
        row_ok = t < T
        if TMA:  # BLOCK_M <= B: the slice is BLOCK_M consecutive tokens of one head; zeros past T
            r0 = (it % N_SUB) * BLOCK_M
            box = [q_b.to(tl.int32), (h * G + r0 // B).to(tl.int32), (i * B + r0 % B).to(tl.int32), 0]
            q = q_desc.load(box).reshape([BLOCK_M, D])  # [M, D]
            do = do_desc.load(box).reshape([BLOCK_M, D])  # [M, D]
        else:
            q_off = hq.to(tl.int64) * sq_h + t.to(tl.int64) * sq_t
            do_off = hq.to(tl.int64) * sdo_h + t.to(tl.int64) * sdo_t
            q = tl.load(q_base + q_off[:, None] + offs_d[None, :], mask=row_ok[:, None], other=0.0)  # [M, D]
            do = tl.load(do_base + do_off[:, None] + offs_d[None, :], mask=row_ok[:, None], other=0.0)  # [M, D]
        lrow = hq.to(tl.int64) * T + t
        lse = tl.load(lse_base + lrow, mask=row_ok, other=float("-inf"))
        lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)  # p = 0 on empty rows
        delta = tl.load(delta_base + lrow, mask=row_ok, other=0.0)
        # Query rows as the M side (A = q from shared memory, B = K^T): K and V stay in shared memory, not
        # registers, which leaves room for the two [B, D] fp32 accumulators; P^T and dS^T are transposed
        # through shared memory for the dv/dk products.
        doc_q = t  # placeholder, unused without documents
        if HAS_DOC:
            doc_q = tl.load(doc_base + t, mask=row_ok, other=-1)
        b2l = _bias_log2(bias_ptr + pos, HAS_BIAS) - lse2  # [M]
        if KT:  # keys as the M side: P^T, dP^T and dS^T come out of the products as the next ones need them
            sc_t = _masked_scores(q, k, t, kpos, doc_q, doc_k, CAUSAL, HAS_DOC, PREC, True)  # [B, M] raw
            p_t = tl.math.exp2(sc_t * qk_scale + b2l[None, :])  # [B, M]; 0 on rows past T or without visible keys
            dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=PREC)  # [B, D]
            dp_t = tl.dot(v, tl.trans(do), input_precision=PREC)  # [B, M]
            ds_t = p_t * (dp_t - delta[None, :])
            dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=PREC)  # [B, D]
        else:
            sc = _masked_scores(q, k, t, kpos, doc_q, doc_k, CAUSAL, HAS_DOC, PREC, False)  # [M, B] raw
            p = tl.math.exp2(sc * qk_scale + b2l[:, None])  # [M, B]; 0 on rows past T or without visible keys
            dv = tl.dot(tl.trans(p.to(do.dtype)), do, dv, input_precision=PREC)  # [B, D]
            dp = tl.dot(do, tl.trans(v), input_precision=PREC)  # [M, B]
            ds = p * (dp - delta[:, None])
            dk = tl.dot(tl.trans(ds.to(q.dtype)), q, dk, input_precision=PREC)  # [B, D]
    return dk, dv


@triton.jit
def _dkdv_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    do_ptr,
    q_desc,
    do_desc,
    dk_ptr,
    dv_ptr,
    dkp_ptr,
    dvp_ptr,
    lse_ptr,
    delta_ptr,
    items_ptr,
    csr_ptr,
    bias_ptr,
    doc_ptr,
    sq_b,
    sq_h,
    sq_t,
    sk_b,
    sk_h,
    sk_t,
    sv_b,
    sv_h,
    sv_t,
    sdo_b,
    sdo_h,
    sdo_t,
    sdk_b,
    sdk_h,
    sdk_t,
    sdv_b,
    sdv_h,
    sdv_t,
    T,
    nb,
    S,
    Hkv,
    qk_scale,
    sm_scale,
    G: tl.constexpr,
    B: tl.constexpr,
    D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_DOC: tl.constexpr,
    TMA: tl.constexpr,
    PREC: tl.constexpr,
    KT: tl.constexpr,
):
    item = items_ptr + tl.program_id(0).to(tl.int64) * 5  # (key block, start, mid, end, partial slot)
    kbf = tl.load(item)  # (b*Hkv + h)*nb + kb
    start = tl.load(item + 1)
    mid = tl.load(item + 2)  # entries [start, mid) have query block <= kb: causal mask
    end = tl.load(item + 3)
    slot = tl.load(item + 4)  # -1: this program owns the block; else index of its fp32 partial
    bh = kbf // nb
    kb = kbf % nb
    b = bh // Hkv
    h = bh % Hkv
    offs_n = tl.arange(0, B)
    offs_d = tl.arange(0, D)
    kpos = kb * B + offs_n  # [B]
    k_ok = kpos < T
    k_off = b * sk_b + h * sk_h + kpos * sk_t
    v_off = b * sv_b + h * sv_h + kpos * sv_t
    k = tl.load(k_ptr + k_off[:, None] + offs_d[None, :], mask=k_ok[:, None], other=0.0)  # [B, D]
    v = tl.load(v_ptr + v_off[:, None] + offs_d[None, :], mask=k_ok[:, None], other=0.0)  # [B, D]
    doc_base = doc_ptr + b * T
    if HAS_DOC:
        doc_k = tl.load(doc_base + kpos, mask=k_ok, other=-1)
    else:
        doc_k = kpos
    q_base = q_ptr + b * sq_b
    do_base = do_ptr + b * sdo_b
    lse_base = lse_ptr + b * Hkv * G * T
    delta_base = delta_ptr + b * Hkv * G * T
    sel0 = bh * nb

    dk = tl.zeros([B, D], tl.float32)
    dv = tl.zeros([B, D], tl.float32)
    dk, dv = _dkdv_inner(
        dk, dv, k, v, kpos, doc_k, csr_ptr, sel0, h, q_base, do_base, q_desc, do_desc, b, lse_base,
        delta_base, bias_ptr, doc_base, sq_h, sq_t, sdo_h, sdo_t, T, S, qk_scale, start, mid, G, B, D, BLOCK_M,
        True, HAS_BIAS, HAS_DOC, TMA, PREC, KT,
    )  # fmt: skip
    dk, dv = _dkdv_inner(
        dk, dv, k, v, kpos, doc_k, csr_ptr, sel0, h, q_base, do_base, q_desc, do_desc, b, lse_base,
        delta_base, bias_ptr, doc_base, sq_h, sq_t, sdo_h, sdo_t, T, S, qk_scale, mid, end, G, B, D, BLOCK_M,
        False, HAS_BIAS, HAS_DOC, TMA, PREC, KT,
    )  # fmt: skip
    dk = dk * sm_scale
    if slot < 0:
        dk_off = b * sdk_b + h * sdk_h + kpos * sdk_t
        dv_off = b * sdv_b + h * sdv_h + kpos * sdv_t
        tl.store(dk_ptr + dk_off[:, None] + offs_d[None, :], dk.to(dk_ptr.dtype.element_ty), mask=k_ok[:, None])
        tl.store(dv_ptr + dv_off[:, None] + offs_d[None, :], dv.to(dv_ptr.dtype.element_ty), mask=k_ok[:, None])
    else:
        p_off = slot * (B * D) + offs_n[:, None] * D + offs_d[None, :]  # [B, D] in partial slot
        tl.store(dkp_ptr + p_off, dk)
        tl.store(dvp_ptr + p_off, dv)


@triton.jit
def _reduce_kernel(
    dkp_ptr,
    dvp_ptr,
    dk_ptr,
    dv_ptr,
    red_ptr,
    sdk_b,
    sdk_h,
    sdk_t,
    sdv_b,
    sdv_h,
    sdv_t,
    T,
    nb,
    Hkv,
    B: tl.constexpr,
    D: tl.constexpr,
):
    """Sum the fp32 partials of one split key block (slots first .. first+n-1) into dk/dv."""
    red = red_ptr + tl.program_id(0).to(tl.int64) * 3
    kbf = tl.load(red)
    first = tl.load(red + 1)
    n = tl.load(red + 2)
    offs_n = tl.arange(0, B)
    offs_d = tl.arange(0, D)
    p_off = offs_n[:, None] * D + offs_d[None, :]
    dk = tl.zeros([B, D], tl.float32)
    dv = tl.zeros([B, D], tl.float32)
    for s in range(first, first + n):
        dk += tl.load(dkp_ptr + s * (B * D) + p_off)
        dv += tl.load(dvp_ptr + s * (B * D) + p_off)
    bh = kbf // nb
    b = bh // Hkv
    h = bh % Hkv
    kpos = (kbf % nb) * B + offs_n
    k_ok = kpos < T
    dk_off = b * sdk_b + h * sdk_h + kpos * sdk_t
    dv_off = b * sdv_b + h * sdv_h + kpos * sdv_t
    tl.store(dk_ptr + dk_off[:, None] + offs_d[None, :], dk.to(dk_ptr.dtype.element_ty), mask=k_ok[:, None])
    tl.store(dv_ptr + dv_off[:, None] + offs_d[None, :], dv.to(dv_ptr.dtype.element_ty), mask=k_ok[:, None])


@triton.jit
def _block_add_kernel(x_ptr, g_ptr, sx_b, sx_h, sx_t, T, nb, H, Hkv, B: tl.constexpr, D: tl.constexpr,
                      BLOCK_T: tl.constexpr):  # fmt: skip
    """x[b, h, t] += g[b, h // (H / Hkv), t // B] in place, fp32 sums: ``routing._add_per_block`` (the reference)."""
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hk = h // (H // Hkv)
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    d = tl.arange(0, D)
    ok = (t < T)[:, None]
    x_off = b.to(tl.int64) * sx_b + h.to(tl.int64) * sx_h + t.to(tl.int64) * sx_t
    g_row = (b * Hkv + hk).to(tl.int64) * nb + t // B
    x = tl.load(x_ptr + x_off[:, None] + d[None, :], mask=ok)
    g = tl.load(g_ptr + g_row[:, None] * D + d[None, :], mask=ok)
    tl.store(x_ptr + x_off[:, None] + d[None, :], (x.to(tl.float32) + g).to(x.dtype), mask=ok)


@triton.jit
def _scores_grad_kernel(qs_ptr, lv_ptr, node_ptr, w_ptr, dq_ptr, dl_ptr, nb, n, M, D: tl.constexpr,
                        M_P2: tl.constexpr, WANT_Q: tl.constexpr, WANT_L: tl.constexpr):  # fmt: skip
    """Row r = (b*Hkv + h)*nb + i of ``selector.reference.scores_backward`` (the reference): dq[r] = sum_m w[r, m]
    level[node[r, m]] and, by atomic adds, dl[node[r, m]] += w[r, m] q_sum[r] (rows of the same b, h; nodes clamped
    to [0, n) as there; slots with w = 0 add nothing and are skipped)."""
    r = tl.program_id(0).to(tl.int64)
    m = tl.arange(0, M_P2)
    d = tl.arange(0, D)
    ok = m < M
    node = tl.load(node_ptr + r * M + m, mask=ok, other=0)
    node = tl.minimum(tl.maximum(node, 0), n - 1)
    w = tl.load(w_ptr + r * M + m, mask=ok, other=0.0)
    lrow = (r // nb) * n + node  # [M_P2] rows of level
    if WANT_Q:
        picked = tl.load(lv_ptr + lrow[:, None] * D + d[None, :], mask=ok[:, None], other=0.0)
        tl.store(dq_ptr + r * D + d, tl.sum(w[:, None] * picked, 0))
    if WANT_L:
        qs = tl.load(qs_ptr + r * D + d)
        hit = (ok & (w != 0.0))[:, None]
        tl.atomic_add(dl_ptr + lrow[:, None] * D + d[None, :], w[:, None] * qs[None, :], mask=hit, sem="relaxed")


# ----------------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------------


def _alloc(shape, dtype, device) -> torch.Tensor:
    if POISON:
        return torch.full(shape, math.nan, dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _alloc_like(x: torch.Tensor) -> torch.Tensor:
    """A tensor of x's shape, dtype and memory layout: out and dq in q's layout, dk, dv in k's and v's. With
    HF's q/k/v ([Bt, T, H, D] storage seen as [Bt, H, T, D]) the caller's transpose back is then free, and
    autograd never copies a gradient into its input's layout (a q-sized copy at 1M tokens: 8 GiB)."""
    return torch.full_like(x, math.nan) if POISON else torch.empty_like(x)


def _prec(dtype: torch.dtype) -> str:
    # fp32 inputs: exact fp32 products (the tests compare at 1e-4); bf16/fp16 ignore it.
    return "ieee" if dtype == torch.float32 else "tf32"


def _largest_pow2_divisor(n: int) -> int:
    return n & -n


def _tensor_desc(x: torch.Tensor, rows: int, want: bool) -> tuple[object, bool]:
    """(descriptor of x [Bt, H, T, D] with [1, 1, rows, D] boxes, True) when wanted and possible (unit stride
    along D, 16-byte aligned base and strides, a Hopper GPU or the interpreter), else (x, False). Any layout
    of the other dims: HF's q/k/v are [Bt, T, H, D] tensors seen transposed."""
    elem = x.element_size()
    ok = (
        want
        and x.stride(-1) == 1
        and x.data_ptr() % 16 == 0
        and all(st * elem % 16 == 0 for st in x.stride()[:-1])
        and max(x.shape[:-1]) < 2**31
        and (not x.is_cuda or torch.cuda.get_device_capability(x.device)[0] >= 9)
    )
    if not ok:
        return x, False
    return TensorDescriptor.from_tensor(x, [1, 1, rows, x.shape[-1]]), True


def _config(kind: str, G: int, B: int, D: int, device: torch.device) -> dict[str, int]:
    """BLOCK_M (rows of the G*B tile per program; must divide G*B), BLOCK_N (keys per step of the forward and
    dQ loops; divides B), num_warps, num_stages, TMA."""
    big = B >= 128 and D > 64  # 128-key blocks: Flex's own tile; measured separately (docs/kernels.md)
    if device.type != "cuda":  # interpreter: small tiles keep numpy fast
        cfg = {"BLOCK_M": 64, "num_warps": 4, "num_stages": 1, "TMA": 0}
    elif kind == "fwd":  # (measured on H100, scripts/bench_attention_kernel.py; spill-free in triton 3.6)
        if big:  # GLUON: one head of 64 rows a consumer, 128 keys a step, each step's softmax beside the previous
            # step's P V (1M, H100: 234.7 ms against 270.1 with 2 heads and 64-key steps; the Triton one: 128 x 128)
            cfg = {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2, "TMA": 1, "GLUON": 1}
            cfg.update(GL_HEADS=1, GL_KEYS=128, GL_OVERLAP=1, STAGES=3)
        elif D > 64:  # GLUON: gluon.py's warp-specialised forward where it applies (1M: 274-288 vs 324-332 ms)
            cfg = {"BLOCK_M": 256, "num_warps": 8, "num_stages": 2, "TMA": 1, "GLUON": 1}
        else:
            cfg = {"BLOCK_M": 128, "num_warps": 4, "num_stages": 3}
    elif kind == "dq":
        if big:  # GLUON: each 64-key step's softmax beside the previous step's dq product, 3 stages (1M, H100, whole
            # backward: 767.7 ms against 789.2 without)
            cfg = {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 2, "TMA": 1, "GLUON": 1}
            cfg.update(GL_OVERLAP=1, STAGES=3)
        elif D > 64:  # GLUON: the warp-specialised dQ pass (1M, whole backward: 1,104-1,114 vs 1,199-1,210 ms)
            cfg = {"BLOCK_M": 128, "num_warps": 8, "num_stages": 3, "TMA": 1, "GLUON": 1}
        else:
            cfg = {"BLOCK_M": 128, "num_warps": 4, "num_stages": 3}
    else:  # dkdv: B key rows per program, BLOCK_M query rows per iteration; 2 programs per SM (3 stages: 1)
        cfg = {"BLOCK_M": 64, "num_warps": 4, "num_stages": 2, "TMA": int(D > 64), "STAGES": 4, "GLUON": 1}
        if big:  # Triton at 128 keys: keys as the M side (KT), 8 warps (H200, 1M: 752 ms; query rows as M: 1,946 ms);
            # the Gluon pass with 3 stages (1M, H100, whole backward: 780.9 / 790.4 ms against 788.8 / 800.4 with 4)
            cfg.update(num_warps=8, KT=1, STAGES=3)
    # TMA: K/V (fwd, dq) or q/dO (dkdv) through bulk tensor copies (``_tensor_desc``); measured at D = 128 only.
    override = CONFIG_OVERRIDE.get(kind, {})
    known = {"BLOCK_M", "BLOCK_N", "num_warps", "num_stages", "TMA", "KT", "GLUON", "STAGES", "PINGPONG", "GL_HEADS",
             "GL_KEYS", "GL_OVERLAP", "GL_DELTA"}  # fmt: skip
    unknown = set(override) - known
    if unknown:  # a misspelt key would otherwise time the defaults under the variant's name
        raise ValueError(f"CONFIG_OVERRIDE[{kind!r}]: unknown keys {sorted(unknown)}")
    # GLUON: the warp-specialised Hopper kernels of ``gluon.py`` where they apply (STAGES: their shared-memory ring;
    # PINGPONG: the forward's consumers take turns issuing S = Q K^T; GL_HEADS: query heads per forward consumer;
    # GL_KEYS: keys a step of the forward and dQ consumers; GL_OVERLAP: the forward's softmax beside its previous
    # step's P V, with one head a consumer, or the dQ pass's beside its previous dq product; GL_DELTA: the Gluon dQ
    # pass computes delta from its own dO and O tiles, and the dK/dV pass's row statistics, instead of
    # ``_delta_kernel`` and ``gluon.row_stats``); num_stages etc. are the Triton kernels'.
    cfg = {"TMA": 0, "BLOCK_N": B, "KT": 0, "GLUON": 0, "STAGES": 2, "PINGPONG": 0, "GL_HEADS": 2, "GL_KEYS": 64,
           "GL_OVERLAP": 0, "GL_DELTA": 1, **cfg, **override}  # fmt: skip
    # Largest power of two <= the wish that divides G*B (B is a power of two, G need not be).
    cfg["BLOCK_M"] = max(16, min(cfg["BLOCK_M"], B * _largest_pow2_divisor(G)))
    cfg["BLOCK_N"] = max(16, min(cfg["BLOCK_N"], B))
    return cfg


def _add_per_block(x: torch.Tensor, g: torch.Tensor, block_size: int) -> None:
    """``routing._add_per_block`` as one kernel: x [Bt, H, T, D] += g [Bt, Hkv, nb, D] broadcast over each group's
    heads and each block's tokens, in place. Why by hand: torch's in-place add of the stride-0 broadcast (fp32 into
    bf16, > 2^31 elements, so cut into pieces) moved x at 0.69 TB/s; this kernel at 2.75 TB/s (one H100, dq at 1M
    tokens: 6.2 against 24.9 ms; docs/kernels.md, "Thirty-first session")."""
    bt, h, t, d = x.shape
    g = g.to(torch.float32).contiguous()
    _block_add_kernel[(triton.cdiv(t, 64), bt * h)](
        x, g, x.stride(0), x.stride(1), x.stride(2), t, g.shape[2], h, g.shape[1], B=block_size, D=d, BLOCK_T=64,
        num_warps=4,
    )  # fmt: skip


def _scores_grad(q_sum, level, node, grad, chunk, want_q=True, want_level=True):
    """``selector.reference.scores_backward`` as one kernel (same arguments; ``chunk`` unused: nothing is gathered
    into memory). Why by hand: torch's version gathers the chosen rows, multiplies them in a batched matmul and
    scatters the level gradient with index_add_, 11 ms of an H100's 1M-token backward (gather 2.8, bmm 1.6, mul 1.9,
    index_add 4.7: docs/kernels.md, "Thirty-second session"); here each row's slots are read once, the level rows
    from L2."""
    bt, hkv, nb, d = q_sum.shape
    n, m = level.shape[2], node.shape[-1]
    q_sum, level = q_sum.contiguous(), level.contiguous()
    node, grad = node.contiguous(), grad.to(q_sum.dtype).contiguous()
    d_q = _alloc(q_sum.shape, q_sum.dtype, q_sum.device) if want_q else None
    d_level = torch.zeros_like(level) if want_level else None
    if bt * hkv * nb and (want_q or want_level):
        _scores_grad_kernel[(bt * hkv * nb,)](
            q_sum, level, node, grad, d_q if want_q else q_sum, d_level if want_level else level, nb, n, m, D=d,
            M_P2=triton.next_power_of_2(m), WANT_Q=want_q, WANT_L=want_level, num_warps=4,
        )  # fmt: skip
    return d_q, d_level


def _delta(out: torch.Tensor, grad_out: torch.Tensor, dlse: torch.Tensor | None) -> torch.Tensor:
    """delta = rowsum(dO * out) - dlse: [Bt, Hq, T] fp32 (out, grad_out [Bt, Hq, T, D]; dlse [Bt, Hq, T] or None)."""
    Bt, Hq, T, D = out.shape
    delta = _alloc((Bt, Hq, T), torch.float32, out.device)
    _delta_kernel[(triton.cdiv(T, 64), Bt * Hq)](
        out, grad_out, dlse if dlse is not None else delta, delta,
        out.stride(0), out.stride(1), out.stride(2),
        grad_out.stride(0), grad_out.stride(1), grad_out.stride(2),
        T, Hq, D=D, BLOCK_T=64, HAS_DLSE=dlse is not None,
    )  # fmt: skip
    return delta


def _row_counts(indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """indices [Bt, Hkv, nb, S] -> (valid entries, entries below the diagonal), each int32 [Bt, Hkv, nb]."""
    nb = indices.shape[2]
    valid = indices >= 0  # [Bt, Hkv, nb, S]
    below = valid & (indices < torch.arange(nb, device=indices.device).view(nb, 1))  # [Bt, Hkv, nb, S]
    return valid.sum(-1, dtype=torch.int32), below.sum(-1, dtype=torch.int32)


def _forward(q, k, v, indices, cnt, n_lo, doc_ids, block_bias, B: int, scale: float):
    Bt, Hq, T, D = q.shape
    Hkv, nb, S = k.shape[1], indices.shape[2], indices.shape[3]
    G = Hq // Hkv
    out = _alloc_like(q)  # [Bt, Hq, T, D]
    lse = _alloc((Bt, Hq, T), torch.float32, q.device)  # [Bt, Hq, T]
    cfg = _config("fwd", G, B, D, q.device)
    if cfg["GLUON"] and _gluon.supported(q, k, v, B):
        _gluon.forward(q, k, v, indices, cnt, n_lo, block_bias, doc_ids, out, lse, B, scale * 1.4426950408889634,
                       stages=cfg["STAGES"], pingpong=bool(cfg["PINGPONG"]), heads=cfg["GL_HEADS"],
                       keys=cfg["GL_KEYS"], overlap=bool(cfg["GL_OVERLAP"]))  # fmt: skip
        return out, lse
    bm = cfg["BLOCK_M"]
    grid = (nb * (G * B // bm), Bt * Hkv)
    dummy = cnt  # stands in for absent optional tensors (never read: constexpr flags)
    k_desc, tma = _tensor_desc(k, cfg["BLOCK_N"], cfg["TMA"])
    v_desc, tma_v = _tensor_desc(v, cfg["BLOCK_N"], tma)
    tma = tma and tma_v
    _fwd_kernel[grid](
        q, k, v, k_desc if tma else k, v_desc if tma else v, out, lse, indices, cnt, n_lo,
        block_bias if block_bias is not None else dummy,
        doc_ids if doc_ids is not None else dummy,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        T, nb, S, Hkv, scale * 1.4426950408889634,
        G=G, B=B, BLOCK_N=cfg["BLOCK_N"], D=D, BLOCK_M=bm, HAS_BIAS=block_bias is not None,
        HAS_DOC=doc_ids is not None, TMA=tma,
        PREC=_prec(q.dtype), num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
    return out, lse


def _auto_split(total: int, device: torch.device) -> int:
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    return max(_MIN_SPLIT, -(-total // (_PIECES_PER_SM * sms)))


def _kv_work(indices: torch.Tensor, split: int | None):
    """CSR kv block -> listed entries and its work items (see module docstring).

    Returns csr [E] int64 (flat positions in indices of the valid entries, grouped by key block, ascending
    query block within a group), items [n_items, 5] int64 (key block, start, mid, end, partial slot or -1),
    longest first, red [n_split_blocks, 3] int64 (key block, first partial slot, pieces), and n_slots."""
    Bt, Hkv, nb, S = indices.shape
    dev = indices.device
    nk = Bt * Hkv * nb
    valid = indices >= 0  # [Bt, Hkv, nb, S]
    base = torch.arange(Bt * Hkv, device=dev).view(Bt, Hkv, 1, 1) * nb  # [Bt, Hkv, 1, 1]
    qb = torch.arange(nb, device=dev).view(nb, 1)
    # Sort key: (key block, query block) of each entry; padding sorts last (key nk * nb). The sorted keys give each
    # key block's range and its entries with query block <= key block (those that need the causal mask: the diagonal,
    # or listed by mistake) by binary search. (Two torch.bincount histograms did the counting before: 3.3 ms at 1M on
    # an H100, atomics piling on the sink and local-window blocks; docs/kernels.md, "Thirty-third session".)
    key = torch.where(valid, (base + indices) * nb + qb, nk * nb).view(-1)  # [Bt*Hkv*nb*S]
    key = key.to(torch.int32) if nk * nb < 2**31 - 1 else key
    sorted_key, csr = torch.sort(key, stable=True)  # [Bt*Hkv*nb*S] each; csr int64
    j = torch.arange(nk + 1, device=dev, dtype=key.dtype)  # [nk + 1]
    bounds = torch.searchsorted(sorted_key, j * nb)  # [nk + 1]: key block j's entries are bounds[j] .. bounds[j+1]-1
    starts, counts = bounds[:-1], bounds[1:] - bounds[:-1]  # [nk] each
    n_le = torch.searchsorted(sorted_key, j[:-1] * nb + j[:-1] % nb + 1) - starts  # [nk]: query block <= key block
    total = int(bounds[-1])
    L = split if split is not None else _auto_split(total, dev)
    pieces = ((counts + L - 1) // L).clamp_min(1)  # [nk]; an unlisted block still gets one program (zeros)
    n_items = int(pieces.sum())
    blk = torch.repeat_interleave(torch.arange(nk, device=dev), pieces, output_size=n_items)  # [n_items]
    first_item = torch.cumsum(pieces, 0) - pieces  # [nk]
    piece = torch.arange(n_items, device=dev) - first_item[blk]  # [n_items] piece number within its block
    blk_end = (starts + counts)[blk]
    start = starts[blk] + piece * L
    end = torch.minimum(start + L, blk_end)
    mid = torch.clamp(starts[blk] + n_le[blk], min=start, max=end)
    is_split = pieces[blk] > 1  # [n_items]
    slot_all = torch.cumsum(is_split.long(), 0) - 1  # slots of one split block are consecutive
    slot = torch.where(is_split, slot_all, -1)
    n_slots = int(is_split.sum())
    length = end - start
    if KV_ORDER == "lpt":
        order = torch.argsort(length, descending=True, stable=True)  # longest first
    else:
        # Long pieces first (longest first), then the rest in key-block order within each head: programs
        # running together then share query rows in L2 (the local window, nearby routed picks).
        long = length > _LONG_FACTOR * max(1, total) / nk
        order = torch.cat(
            [torch.nonzero(long).view(-1)[torch.argsort(length[long], descending=True)], torch.nonzero(~long).view(-1)]
        )  # [n_items]; nonzero(...) [n, 1] -> view(-1) [n]
    items = torch.stack([blk, start, mid, end, slot], 1)[order].contiguous()  # [n_items, 5]
    split_blk = torch.nonzero(pieces > 1).view(-1)  # [n_split_blocks]
    red = torch.stack([split_blk, slot_all[first_item[split_blk]], pieces[split_blk]], 1).contiguous()
    return csr, items, red, n_slots


def _backward(q, k, v, out, lse, indices, cnt, n_lo, doc_ids, block_bias, grad_out, grad_lse, B, scale, split, want):
    Bt, Hq, T, D = q.shape
    Hkv, nb, S = k.shape[1], indices.shape[2], indices.shape[3]
    G = Hq // Hkv
    dev = q.device
    want_q, want_k, want_v, want_bias = want
    if grad_out is None:  # only lse was used
        grad_out = torch.zeros_like(out)
    if grad_out.stride(-1) != 1:
        grad_out = grad_out.contiguous()
    has_bias, has_doc = block_bias is not None, doc_ids is not None
    dummy = cnt
    qk_scale = scale * 1.4426950408889634

    dlse = grad_lse.contiguous() if grad_lse is not None else None
    # delta = rowsum(dO * O) - dlse [Bt, Hq, T]: the Gluon dQ pass computes it from its own tiles and writes it, with
    # lse, as the dK/dV pass's row statistics (st); otherwise this kernel does, before the passes.
    delta = st = None
    dq = dk = dv = dbias = None
    if want_q or want_bias:
        cfg = _config("dq", G, B, D, dev)
        bm = cfg["BLOCK_M"]
        dq = _alloc_like(q) if want_q else None  # [Bt, Hq, T, D]
        dq_arg = dq if dq is not None else q  # never written when not wanted
        gluon = cfg["GLUON"] and _gluon.backward_supported(q, k, v, grad_out, B)
        # Bias-gradient partials, one per program's slice of the G*B rows (the Gluon pass: one per query head)
        n_split = _gluon.dq_partials(G, B) if gluon else G * B // bm
        dbias_part = _alloc((n_split, Bt, Hkv, nb, S), torch.float32, dev) if want_bias else None
        st = _gluon.row_stats_like(lse) if gluon and cfg["GL_DELTA"] else None
        delta = _delta(out, grad_out, dlse) if st is None else None
        ran = gluon and _gluon.dq_pass(
            q, k, v, grad_out, dq, lse, delta, indices, cnt, n_lo, block_bias, dbias_part, doc_ids, B, qk_scale, scale,
            stages=cfg["STAGES"], keys=cfg["GL_KEYS"], overlap=bool(cfg["GL_OVERLAP"]), out=out, dlse=dlse, st=st,
        )  # fmt: skip
        if not ran and delta is None:  # st was not filled: delta by its own kernel, for the Triton pass
            st, delta = None, _delta(out, grad_out, dlse)
        if not ran:  # the Triton pass (a Gluon one was not asked for, or does not apply to these inputs)
            k_desc, tma = _tensor_desc(k, cfg["BLOCK_N"], cfg["TMA"])
            v_desc, tma_v = _tensor_desc(v, cfg["BLOCK_N"], tma)
            tma = tma and tma_v
            _dq_kernel[(nb * n_split, Bt * Hkv)](
                q, k, v, k_desc if tma else k, v_desc if tma else v, grad_out, dq_arg, lse, delta, indices, cnt, n_lo,
                block_bias if has_bias else dummy,
                dbias_part if dbias_part is not None else delta,
                doc_ids if has_doc else dummy,
                q.stride(0), q.stride(1), q.stride(2),
                k.stride(0), k.stride(1), k.stride(2),
                v.stride(0), v.stride(1), v.stride(2),
                grad_out.stride(0), grad_out.stride(1), grad_out.stride(2),
                dq_arg.stride(0), dq_arg.stride(1), dq_arg.stride(2),
                T, nb, S, Hkv, Bt * Hkv * nb, qk_scale, scale,
                G=G, B=B, BLOCK_N=cfg["BLOCK_N"], D=D, BLOCK_M=bm, S_P2=triton.next_power_of_2(S), HAS_BIAS=has_bias,
                WANT_DBIAS=want_bias, WANT_DQ=want_q, HAS_DOC=has_doc, TMA=tma, PREC=_prec(q.dtype),
                num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
            )  # fmt: skip
        if want_bias:
            # [n_split, Bt, Hkv, nb, S] -> [Bt, Hkv, nb, S]: the row splits' partial sums (fp32)
            dbias = dbias_part[0] if n_split == 1 else dbias_part.sum(0)
            dbias = dbias.to(block_bias.dtype) if has_bias else dbias

    # (dK/dV on a side stream beside dQ measured no gain at 1M on an H100: 1,191-1,198 ms against 1,197-1,210 ms for
    # the whole backward; docs/kernels.md, "Twentieth session".)
    if want_k or want_v:
        csr, items, red, n_slots = _kv_work(indices, split)
        cfg = _config("dkdv", G, B, D, dev)
        if st is None and delta is None:  # no dQ pass ran
            delta = _delta(out, grad_out, dlse)
        dk = _alloc_like(k)  # [Bt, Hkv, T, D]
        dv = _alloc_like(v)
        dkp = _alloc((max(n_slots, 1), B, D), torch.float32, dev)  # fp32 partials of split key blocks
        dvp = _alloc((max(n_slots, 1), B, D), torch.float32, dev)
        bm = cfg["BLOCK_M"]
        ran = cfg["GLUON"] and _gluon.dkdv_pass(
            q, k, v, grad_out, dk, dv, dkp, dvp, lse, delta, indices, items, csr, block_bias, doc_ids, B, qk_scale,
            scale, stages=cfg["STAGES"], st=st,
        )  # fmt: skip
        if not ran:  # the Triton pass (a Gluon one was not asked for, or does not apply to these inputs)
            if delta is None:  # the Gluon dQ pass's (row 1 of each (batch, head) pair of st)
                delta = st.view(Bt, Hq, 2, -1)[:, :, 1, :T].contiguous()
            q_desc, tma = _tensor_desc(q, bm, cfg["TMA"] and bm <= B)
            do_desc, tma_do = _tensor_desc(grad_out, bm, tma)
            tma = tma and tma_do
            _dkdv_kernel[(items.shape[0],)](
                q, k, v, grad_out, q_desc if tma else q, do_desc if tma else q, dk, dv, dkp, dvp, lse, delta, items, csr,
                block_bias if has_bias else dummy,
                doc_ids if has_doc else dummy,
                q.stride(0), q.stride(1), q.stride(2),
                k.stride(0), k.stride(1), k.stride(2),
                v.stride(0), v.stride(1), v.stride(2),
                grad_out.stride(0), grad_out.stride(1), grad_out.stride(2),
                dk.stride(0), dk.stride(1), dk.stride(2),
                dv.stride(0), dv.stride(1), dv.stride(2),
                T, nb, S, Hkv, qk_scale, scale,
                G=G, B=B, D=D, BLOCK_M=bm, HAS_BIAS=has_bias, HAS_DOC=has_doc, TMA=tma,
                PREC=_prec(q.dtype), KT=bool(cfg["KT"]),
                num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
            )  # fmt: skip
        if red.shape[0]:
            _reduce_kernel[(red.shape[0],)](
                dkp, dvp, dk, dv, red,
                dk.stride(0), dk.stride(1), dk.stride(2),
                dv.stride(0), dv.stride(1), dv.stride(2),
                T, nb, Hkv, B=B, D=D,
            )  # fmt: skip
        dk = dk if want_k else None
        dv = dv if want_v else None
    return dq, dk, dv, dbias


class _SparseAttentionTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, indices, doc_ids, block_bias, routed_mask, q_mean, k_mean, block_size: int,
                scale: float, split):  # fmt: skip
        cnt, n_lo = _row_counts(indices)  # [Bt, Hkv, nb] int32 each
        with _device(q):
            out, lse = _forward(q, k, v, indices, cnt, n_lo, doc_ids, block_bias, block_size, scale)
        ctx.save_for_backward(q, k, v, out, lse, indices, cnt, n_lo, doc_ids, block_bias, routed_mask, q_mean, k_mean)
        ctx.block_size, ctx.scale, ctx.split = block_size, scale, split
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse, indices, cnt, n_lo, doc_ids, block_bias, routed_mask, q_mean, k_mean = ctx.saved_tensors
        n = ctx.needs_input_grad
        want_route = routed_mask is not None and (n[0] or n[1])
        with _device(q):
            dq, dk, dv, dbias = _backward(
                q, k, v, out, lse, indices, cnt, n_lo, doc_ids, block_bias, grad_out, grad_lse,
                ctx.block_size, ctx.scale, ctx.split, (n[0], n[1], n[2], n[5] or want_route),
            )  # fmt: skip
            if want_route:  # the routing gradient of the attention router, in place (routing.py)
                add_routing_grads(
                    dq, dk, q, k, indices, dbias, routed_mask, ctx.block_size, _add_per_block, _scores_grad,
                    means=(q_mean, k_mean) if q_mean is not None else None,
                )  # fmt: skip
        return dq, dk, dv, None, None, dbias if n[5] else None, None, None, None, None, None, None


def _device(x: torch.Tensor):
    """Launch on x's GPU whatever the current device is (Triton launches on the current one)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _prepare(x: torch.Tensor) -> torch.Tensor:
    """Kernels index rows by strides and need unit stride along D."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _sparse_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    indices: torch.Tensor,
    block_size: int,
    doc_ids: torch.Tensor | None = None,
    scale: float | None = None,
    block_bias: torch.Tensor | None = None,
    kv_split: int | None = None,
    routed_mask: torch.Tensor | None = None,
    route_means: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``sparse_attention_triton`` with the CSR piece length L exposed (None: automatic)."""
    D, B = q.shape[-1], block_size
    check_inputs(q, k, v, indices, block_size, doc_ids, block_bias, routed_mask, route_means)
    # tl.arange and tl.dot: power-of-two tile sides of at least 16.
    if B < 16 or B & (B - 1) or D < 16 or D & (D - 1):
        raise ValueError(f"block_size and head dim must be powers of two >= 16; got {B}, {D}")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32) or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share one of fp16/bf16/fp32; got {q.dtype}, {k.dtype}, {v.dtype}")
    if scale is None:
        scale = D**-0.5
    q, k, v = _prepare(q), _prepare(k), _prepare(v)
    indices = indices.contiguous()
    doc_ids = doc_ids.contiguous() if doc_ids is not None else None
    block_bias = block_bias.contiguous() if block_bias is not None else None
    q_mean, k_mean = route_means if route_means is not None else (None, None)
    return _SparseAttentionTriton.apply(
        q, k, v, indices, doc_ids, block_bias, routed_mask, q_mean, k_mean, B, float(scale), kv_split
    )


def sparse_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    indices: torch.Tensor,
    block_size: int,
    doc_ids: torch.Tensor | None = None,
    scale: float | None = None,
    block_bias: torch.Tensor | None = None,
    routed_mask: torch.Tensor | None = None,
    route_means: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact softmax attention of each query over the key blocks listed for its block (Triton).

    Same semantics as ``reference.sparse_attention``: q [Bt, Hq, T, D]; k, v [Bt, Hkv, T, D] (Hq = G * Hkv);
    indices [Bt, Hkv, ceil(T/block_size), S] int64, sorted per row, no duplicates, -1 padded at the end;
    doc_ids [Bt, T] int64 or None; scale default 1/sqrt(D); block_bias [Bt, Hkv, nb, S] or None (added to
    every logit of listed slot j for all G*B rows of the query block; differentiable); routed_mask
    [Bt, Hkv, nb, S] bool or None: slots routed by q and k themselves, whose routing gradient the backward
    adds to dq and dk in place (``routing.py``); route_means (q̄, k̄) [Bt, Hkv, nb, D] or None: the block means
    that scored those slots (``Selection.means``), which that gradient then need not recompute (3.8 ms of q and k
    sums at 1M tokens on an H100).

    Returns out [Bt, Hq, T, D] in q's dtype and lse [Bt, Hq, T] fp32 (natural log), both differentiable
    w.r.t. q, k, v and block_bias. Queries with no visible key get out 0, lse -inf and zero gradients.
    block_size and D must be powers of two >= 16.
    """
    return _sparse_attention_triton(
        q, k, v, indices, block_size, doc_ids, scale, block_bias, routed_mask=routed_mask, route_means=route_means
    )
