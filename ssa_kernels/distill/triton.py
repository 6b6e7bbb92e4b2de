"""Triton kernel of the distillation target: the dense block mass of ``reference.dense_block_mass`` without
materialising the probabilities.

Why a kernel: the reference builds the sampled rows' fp32 probabilities against every key in chunks and then
sums them per key block: about ten memory passes over Bt x Hq x rows x T fp32 values (twice that with far
blocks). With every query block sampled (the issue-6 recipe: ``distill_blocks=0``) that is a materialised dense
attention per layer per step; on one H200 the recipe's SSA stage ran 0.51 s a step against the dense model's
0.095 s (fc44, docs/functional_context.md), and by an estimate of its bytes (unmeasured: scripts/bench_distill.py)
the chunked reference accounts for most of the difference. Neither torch's SDPA nor FlexAttention returns per-key-block sums of the probabilities (FlexAttention's
score_mod sees one logit at a time and cannot accumulate across rows), so this is written here.

Design. One program per (sampled query block i, batch row, kv head): its G query heads x B rows form one tile
of G*B rows (padded to a power of two), loaded once (and the far query tile with ``far``). Two passes over the
key blocks j <= i, each key block loaded as one B x D tile and used for all G heads:

1. online row max and sum in base 2 (log2(e) folded into the scale), fp32;
2. the probabilities recomputed from them, summed over the block's keys and the tile's real rows: one fp32 per
   key block, divided by G x (real rows), stored.

Key blocks j > i get 0 (a causal row sees nothing there); the loop over j is split at i - local_blocks so the
far blocks (j <= i - local_blocks) use q_far . k_far and the rest q . k, in the same softmax, as in the
reference. The document mask (key s visible to row t iff start(doc t) <= s <= t) is a constexpr flag. FLOPs are
two dense attention score passes of the sampled rows (no P V product); memory traffic is one read of K per pass
and the output.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["dense_block_mass_triton"]


@triton.jit
def _scores(j, n_far, q, qf, kbase, fbase, sk_t, sk_d, sg_t, sg_d, qpos, start, T, B: tl.constexpr,
            BP: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, HAS_DOC: tl.constexpr, scale2, PREC: tl.constexpr):  # fmt: skip
    """Base-2 scores [RP, BP] of the row tile against key block j, masked (causal, in range, in the row's
    document): far blocks (j < n_far) as q_far . k_far from fbase, the others as q . k from kbase."""
    cols = tl.arange(0, BP)  # a key block padded to a power of two
    kpos = j * B + cols
    kvalid = (cols < B) & (kpos < T)
    d = tl.arange(0, DP)
    mask = kvalid[:, None] & (d < D)[None, :]
    if j < n_far:
        k = tl.load(fbase + kpos.to(tl.int64)[:, None] * sg_t + d[None, :] * sg_d, mask=mask, other=0.0)
        s = tl.dot(qf, tl.trans(k), input_precision=PREC) * scale2
    else:
        k = tl.load(kbase + kpos.to(tl.int64)[:, None] * sk_t + d[None, :] * sk_d, mask=mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale2
    ok = kvalid[None, :] & (kpos[None, :] <= qpos[:, None])
    if HAS_DOC:
        ok = ok & (kpos[None, :] >= start[:, None])
    return tl.where(ok, s, -float("inf"))


@triton.jit
def _block_mass_kernel(
    q_ptr, k_ptr, qf_ptr, kf_ptr, start_ptr, qb_ptr, out_ptr,
    sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d,
    sf_b, sf_h, sf_t, sf_d, sg_b, sg_h, sg_t, sg_d,
    so_b, so_h, so_q, so_j,
    T, NB, HKV, LOCAL_BLOCKS, scale2,
    G: tl.constexpr, B: tl.constexpr, BP: tl.constexpr, RP: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, ZB: tl.constexpr,
    HAS_DOC: tl.constexpr, HAS_FAR: tl.constexpr, PREC: tl.constexpr, ROW_MAX: tl.constexpr,
):  # fmt: skip
    pid_q = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // HKV
    h = pid_bh % HKV
    i = tl.load(qb_ptr + pid_q).to(tl.int32)
    r = tl.arange(0, RP)
    g = r // B
    t = i * B + r % B
    real = (r < G * B) & (t < T)
    qpos = tl.minimum(t, T - 1)
    d = tl.arange(0, DP)
    dmask = d < D
    qrow = b.to(tl.int64) * sq_b + (h * G + tl.minimum(g, G - 1)).to(tl.int64) * sq_h + qpos.to(tl.int64) * sq_t
    q = tl.load(q_ptr + qrow[:, None] + d[None, :] * sq_d, mask=real[:, None] & dmask[None, :], other=0.0)
    qf = q
    if HAS_FAR:
        frow = b.to(tl.int64) * sf_b + (h * G + tl.minimum(g, G - 1)).to(tl.int64) * sf_h
        frow = frow + qpos.to(tl.int64) * sf_t
        qf = tl.load(qf_ptr + frow[:, None] + d[None, :] * sf_d, mask=real[:, None] & dmask[None, :], other=0.0)
    start = tl.zeros([RP], dtype=tl.int32)
    if HAS_DOC:
        start = tl.load(start_ptr + b.to(tl.int64) * T + qpos).to(tl.int32)
    kbase = k_ptr + b.to(tl.int64) * sk_b + h.to(tl.int64) * sk_h
    fbase = kf_ptr + b.to(tl.int64) * sg_b + h.to(tl.int64) * sg_h
    n_far = 0
    if HAS_FAR:
        n_far = tl.maximum(i - LOCAL_BLOCKS + 1, 0)  # blocks 0 .. i - LOCAL_BLOCKS are far

    # pass 1: row max and sum (base 2)
    m = tl.full([RP], -float("inf"), dtype=tl.float32)
    lsum = tl.zeros([RP], dtype=tl.float32)
    for j in range(0, i + 1):
        s = _scores(j, n_far, q, qf, kbase, fbase, sk_t, sk_d, sg_t, sg_d, qpos, start, T, B, BP, D, DP, HAS_DOC, scale2, PREC)  # fmt: skip
        m_new = tl.maximum(m, tl.max(s, 1))
        m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)  # padding rows see no key
        lsum = lsum * tl.exp2(m - m_safe) + tl.sum(tl.exp2(s - m_safe[:, None]), 1)
        m = m_new
    m_safe = tl.where(m == -float("inf"), 0.0, m)
    weight = tl.where(real & (lsum > 0), 1.0 / tl.where(lsum > 0, lsum, 1.0), 0.0)  # 1 / l on real rows, else 0
    n_real = tl.sum(real.to(tl.float32), 0)  # G x real rows of the block
    obase = out_ptr + b.to(tl.int64) * so_b + h.to(tl.int64) * so_h + pid_q.to(tl.int64) * so_q

    # pass 2: probabilities summed per key block
    for j in range(0, i + 1):
        s = _scores(j, n_far, q, qf, kbase, fbase, sk_t, sk_d, sg_t, sg_d, qpos, start, T, B, BP, D, DP, HAS_DOC, scale2, PREC)  # fmt: skip
        p = tl.exp2(s - m_safe[:, None]) * weight[:, None]
        if ROW_MAX:  # the largest row mass (padding rows weigh 0)
            tl.store(obase + j * so_j, tl.max(tl.sum(p, 1), 0))
        else:
            tl.store(obase + j * so_j, tl.sum(tl.sum(p, 1), 0) / n_real)
    # key blocks after the query block: no mass
    for z in range(i + 1, NB, ZB):
        zj = z + tl.arange(0, ZB)
        tl.store(obase + zj.to(tl.int64) * so_j, tl.zeros([ZB], dtype=tl.float32), mask=zj < NB)


def _pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


@torch.no_grad()
def dense_block_mass_triton(
    q: Tensor,
    k: Tensor,
    query_blocks: Tensor,
    block_size: int,
    start: Tensor | None = None,
    scale: float | None = None,
    far: tuple[Tensor, Tensor] | None = None,
    local_blocks: int = 1,
    out: Tensor | None = None,
    rows: str = "mean",
) -> Tensor:
    """``reference.dense_block_mass`` (same arguments, but the documents as ``start`` [Bt or 1, T] int64, the first
    position of each token's document, ``reference.doc_starts``; None: one document) -> mass [Bt, Hkv, nq, nb]
    fp32. ``out``: write there (tests pass a NaN-filled one). The scores are taken in q's dtype on tensor cores
    with fp32 accumulation (the reference rounds them to q's dtype first). ``rows``: "mean" or "max" over the query
    block's real rows and G heads (the reference's)."""
    bt, hq, seq_len, d = q.shape
    hkv = k.shape[1]
    if hq % hkv:
        raise ValueError(f"query heads {hq} are not a multiple of kv heads {hkv}")
    group, nb, nq = hq // hkv, -(-seq_len // block_size), len(query_blocks)
    scale = d**-0.5 if scale is None else scale
    if out is None:
        out = torch.empty(bt, hkv, nq, nb, dtype=torch.float32, device=q.device)
    if nq == 0 or bt * hkv == 0:
        return out
    qf, kf = far if far is not None else (q, k)
    qf, kf = qf.to(q.dtype), kf.to(q.dtype)
    k = k.to(q.dtype)
    if start is None:
        st = q.new_zeros(1, dtype=torch.int64)
    else:  # one row of document starts may serve every batch row (HF's [1, T] position ids)
        st = start.to(device=q.device, dtype=torch.int64).expand(bt, seq_len).contiguous()
    qb = query_blocks.to(device=q.device, dtype=torch.int64).contiguous()
    rp = max(16, _pow2(group * block_size))
    dp = max(16, _pow2(d))
    prec = "ieee" if q.dtype == torch.float32 else "tf32"
    _block_mass_kernel[(nq, bt * hkv)](
        q, k, qf, kf, st, qb, out,
        *q.stride(), *k.stride(), *qf.stride(), *kf.stride(), *out.stride(),
        seq_len, nb, hkv, local_blocks, scale * math.log2(math.e),
        G=group, B=block_size, BP=max(16, _pow2(block_size)), RP=rp, D=d, DP=dp, ZB=64,
        HAS_DOC=start is not None, HAS_FAR=far is not None, PREC=prec, ROW_MAX=rows == "max",
        num_warps=4 if rp <= 128 else 8,
    )  # fmt: skip
    return out
