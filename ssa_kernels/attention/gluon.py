"""Hopper forward of SSA block-sparse attention in Gluon, warp-specialised (same semantics as ``_fwd_kernel`` in
``triton.py`` and ``reference.sparse_attention``; the reference is the oracle in the tests).

Why a second forward: the Triton kernel (``triton.py``) runs its 256 x 64 tiles at ~440 TFLOP/s on an H100, with
the softmax of a tile and its two products one after the other in the same warps (docs/kernels.md, "Why the
forward's last 13% is hard"). Triton 3.6 does not warp-specialise that loop on Hopper; Gluon (Triton's lower-level
language, in the same package) lets a kernel say it: FlashAttention-3's layout of the work, written by hand.

Partitions of one program (batch, kv head, query block i), the same G*B = 256-row GQA tile as the Triton forward:
- a load warp walks the index row and streams each listed K/V block into a ring of ``STAGES`` shared-memory
  buffers by TMA (``ready`` / ``empty`` mbarriers per stage);
- two consumer warpgroups own 128 rows each (G/2 query heads x B tokens) and their own fp32 online softmax: while
  one waits on its tensor-core products the other's softmax issues, which is the overlap a single instruction
  stream cannot have. With ``PINGPONG`` the two take turns issuing S = Q K^T (an mbarrier per warpgroup), so their
  products alternate on the tensor cores instead of colliding (FA3's warp-scheduler barrier).
A stage is released when both consumers finished its P V product (``empty`` counts 2 arrivals).

Scope: Hopper (sm_90), D = 128, B = 64, GQA groups of 4, 8, 12, ... query heads (a program per 4 of them),
bf16/fp16, TMA-eligible strides (any layout with unit stride along D: HF's transposed q, k, v too), block bias and
document mask as in the Triton forward. ``supported`` says whether a call qualifies; ``triton._forward`` takes this
kernel by default where it does (``CONFIG_OVERRIDE["fwd"]["GLUON"] = 0`` forces the Triton one) and its own forward
otherwise. The backward is unchanged: it reads only out and lse.

Measured (one H100, 1M tokens, the benchmark's selection, forward alone; docs/kernels.md, "Thirtieth session"):
274-288 ms against the Triton forward's 324-332 ms in the same call.
"""

from __future__ import annotations

import torch

try:  # Gluon ships with Triton >= 3.4; absent or different elsewhere: the Triton forward serves
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonDescriptor

    HAVE_GLUON = hasattr(tma, "async_copy_global_to_shared") and hasattr(gl, "warp_specialize")
except ImportError:  # pragma: no cover - depends on the installed triton
    HAVE_GLUON = False

LOG2E = 1.4426950408889634

if HAVE_GLUON:

    @gluon.jit
    def _gl_loader(k_desc, v_desc, k_bufs, v_bufs, ready, empty, idx_row, n_valid, b, h,
                   B: gl.constexpr, STAGES: gl.constexpr):  # fmt: skip
        """One warp: K and V of listed block e into stage e % STAGES once both consumers released it."""
        nbytes: gl.constexpr = 2 * k_desc.block_type.nbytes
        for e in range(n_valid):
            s = e % STAGES
            ph = (e // STAGES) & 1
            kb = gl.load(idx_row + e).to(gl.int32)
            mbarrier.wait(empty.index(s), ph ^ 1)  # fresh barriers count as phase 1 complete: the first pass is free
            mbarrier.expect(ready.index(s), nbytes)
            tma.async_copy_global_to_shared(k_desc, [b, h, kb * B, 0], ready.index(s), k_bufs.index(s))
            tma.async_copy_global_to_shared(v_desc, [b, h, kb * B, 0], ready.index(s), v_bufs.index(s))

    @gluon.jit
    def _gl_step(acc, l_i, m_i, q_s, k_bufs, v_bufs, ready, empty, turn, e, idx_row, bias_row, t, doc_q, doc_base,
                 T, qk_scale, C: gl.constexpr, B: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr,
                 CAUSAL: gl.constexpr, HAS_BIAS: gl.constexpr, HAS_DOC: gl.constexpr, PINGPONG: gl.constexpr,
                 s_layout: gl.constexpr,
                 o_layout: gl.constexpr, p_layout: gl.constexpr):  # fmt: skip
        """One listed block for this consumer's rows: S = Q K^T, online softmax in base 2, acc += P V."""
        M: gl.constexpr = q_s.shape[0]
        s = e % STAGES
        ph = (e // STAGES) & 1
        mbarrier.wait(ready.index(s), ph)
        k_t = k_bufs.index(s).reshape([B, D]).permute((1, 0))  # [D, B]
        if PINGPONG:  # consumer C issues its product after the other one's, in turn
            mbarrier.wait(turn.index(C), (e & 1) ^ (1 - C))
        sc = warpgroup_mma(q_s, k_t, gl.zeros([M, B], gl.float32, layout=s_layout), use_acc=False,
                           is_async=True)  # fmt: skip
        if PINGPONG:
            mbarrier.arrive(turn.index(1 - C), count=1)
        sc = warpgroup_mma_wait(num_outstanding=0, deps=(sc,))
        if CAUSAL or HAS_DOC:  # CAUSAL: the diagonal block (or a future one listed by mistake)
            kb = gl.load(idx_row + e)
            kpos = kb * B + gl.arange(0, B, layout=gl.SliceLayout(0, s_layout))
            if HAS_DOC:
                doc_k = gl.load(doc_base + kpos, mask=kpos < T, other=-1).to(gl.int32)
                keep = doc_q[:, None] == doc_k[None, :]
                if CAUSAL:
                    keep = keep & (t[:, None] >= kpos[None, :])
            else:
                keep = t[:, None] >= kpos[None, :]
            sc = gl.where(keep, sc, float("-inf"))
        if HAS_BIAS:
            b2 = gl.load(bias_row + e).to(gl.float32) * 1.4426950408889634
        else:
            b2 = 0.0
        m_new = gl.maximum(m_i, gl.max(sc, 1) * qk_scale + b2)
        m_use = gl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet: never -inf - -inf
        p = gl.exp2(sc * qk_scale + (b2 - m_use)[:, None])
        alpha = gl.exp2(m_i - m_use)
        l_i = l_i * alpha + gl.sum(p, 1)
        acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))[:, None]
        p_op = gl.convert_layout(p.to(v_bufs.dtype), p_layout)
        v = v_bufs.index(s).reshape([B, D])  # [B, D]
        acc = warpgroup_mma(p_op, v, acc, is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        mbarrier.arrive(empty.index(s), count=1)
        return acc, l_i, m_new

    @gluon.jit
    def _gl_consumer(q_bufs, q_bar, k_bufs, v_bufs, ready, empty, turn, o_ptr, lse_ptr, idx_row, bias_row, doc_ptr,
                     n_lo, n_valid, b, hq0, i, so_b, so_h, so_t, T, Hq, qk_scale, C: gl.constexpr, B: gl.constexpr,
                     D: gl.constexpr, STAGES: gl.constexpr, HAS_BIAS: gl.constexpr, HAS_DOC: gl.constexpr,
                     PINGPONG: gl.constexpr):  # fmt: skip
        """Warpgroup C: the 2 x B rows of query heads hq0, hq0 + 1 (head-major, then token) over every entry."""
        M: gl.constexpr = 2 * B
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, B, 16])  # fmt: skip
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, D, 16])  # fmt: skip
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
        rows_s = gl.arange(0, M, layout=gl.SliceLayout(1, s_layout))
        t = i * B + rows_s % B  # [M] token of each row
        doc_base = doc_ptr + b.to(gl.int64) * T
        if HAS_DOC:
            doc_q = gl.load(doc_base + t, mask=t < T, other=-1).to(gl.int32)
        else:
            doc_q = t
        q_s = q_bufs.index(C).reshape([M, D])
        mbarrier.wait(q_bar, 0)

        m_i = gl.full([M], float("-inf"), gl.float32, layout=gl.SliceLayout(1, s_layout))
        l_i = gl.zeros([M], gl.float32, layout=gl.SliceLayout(1, s_layout))
        acc = gl.zeros([M, D], gl.float32, layout=o_layout)
        for e in range(0, n_lo):  # below the diagonal: no mask
            acc, l_i, m_i = _gl_step(acc, l_i, m_i, q_s, k_bufs, v_bufs, ready, empty, turn, e, idx_row, bias_row,
                                     t, doc_q, doc_base, T, qk_scale, C, B, D, STAGES, False, HAS_BIAS, HAS_DOC,
                                     PINGPONG, s_layout, o_layout,
                                     p_layout)  # fmt: skip
        for e in range(n_lo, n_valid):
            acc, l_i, m_i = _gl_step(acc, l_i, m_i, q_s, k_bufs, v_bufs, ready, empty, turn, e, idx_row, bias_row,
                                     t, doc_q, doc_base, T, qk_scale, C, B, D, STAGES, True, HAS_BIAS, HAS_DOC,
                                     PINGPONG, s_layout, o_layout,
                                     p_layout)  # fmt: skip

        empty_row = l_i == 0.0  # no visible key: out 0, lse -inf
        l_safe = gl.where(empty_row, 1.0, l_i)
        lse = gl.where(empty_row, float("-inf"), (m_i + gl.log2(l_safe)) * 0.6931471805599453)
        out = acc / gl.convert_layout(l_safe, gl.SliceLayout(1, o_layout))[:, None]
        rows_o = gl.arange(0, M, layout=gl.SliceLayout(1, o_layout))
        t_o = i * B + rows_o % B
        hq_o = hq0 + rows_o // B
        d = gl.arange(0, D, layout=gl.SliceLayout(0, o_layout))
        o_off = b.to(gl.int64) * so_b + hq_o.to(gl.int64) * so_h + t_o.to(gl.int64) * so_t
        ok = t_o < T
        gl.store(o_ptr + o_off[:, None] + d[None, :], out.to(o_ptr.dtype.element_ty), mask=ok[:, None])
        hq_s = hq0 + rows_s // B
        lse_off = (b.to(gl.int64) * Hq + hq_s) * T + t  # lse [Bt, Hq, T], contiguous
        gl.store(lse_ptr + lse_off, lse, mask=t < T)

    @gluon.jit
    def _gl_fwd_kernel(q_desc, k_desc, v_desc, o_ptr, lse_ptr, idx_ptr, cnt_ptr, nlo_ptr, bias_ptr, doc_ptr, so_b,
                       so_h, so_t, T, nb, S, Hkv, qk_scale, G: gl.constexpr, B: gl.constexpr, D: gl.constexpr,
                       STAGES: gl.constexpr, HAS_BIAS: gl.constexpr, HAS_DOC: gl.constexpr,
                       PINGPONG: gl.constexpr):  # fmt: skip
        QUADS: gl.constexpr = G // 4  # programs per (query block, kv head): 4 query heads each
        pid = gl.program_id(0)
        i = nb - 1 - pid // QUADS  # longest index rows (late query blocks) first
        bh = gl.program_id(1)
        b = bh // Hkv
        h = bh % Hkv
        hq0 = h * G + (pid % QUADS) * 4  # first of the program's 4 query heads
        sel = bh.to(gl.int64) * nb + i
        n_valid = gl.load(cnt_ptr + sel)
        n_lo = gl.load(nlo_ptr + sel)
        idx_row = idx_ptr + sel * S
        bias_row = bias_ptr + sel * S

        q_bufs = gl.allocate_shared_memory(q_desc.dtype, [2] + q_desc.block_type.shape, q_desc.layout)
        k_bufs = gl.allocate_shared_memory(k_desc.dtype, [STAGES] + k_desc.block_type.shape, k_desc.layout)
        v_bufs = gl.allocate_shared_memory(v_desc.dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout)
        q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        turn = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        mbarrier.init(q_bar, count=1)
        for s in gl.static_range(STAGES):
            mbarrier.init(ready.index(s), count=1)
            mbarrier.init(empty.index(s), count=2)  # both consumers
        for c in gl.static_range(2):
            mbarrier.init(turn.index(c), count=1)
        mbarrier.expect(q_bar, 2 * q_desc.block_type.nbytes)
        for c in gl.static_range(2):  # each consumer's 2 heads x B tokens in one box
            tma.async_copy_global_to_shared(q_desc, [b, hq0 + 2 * c, i * B, 0], q_bar, q_bufs.index(c))

        Hq = Hkv * G
        gl.warp_specialize(
            [
                (_gl_consumer, (q_bufs, q_bar, k_bufs, v_bufs, ready, empty, turn, o_ptr, lse_ptr, idx_row,
                                bias_row, doc_ptr, n_lo, n_valid, b, hq0, i, so_b, so_h, so_t, T, Hq, qk_scale, 0,
                                B, D, STAGES, HAS_BIAS, HAS_DOC, PINGPONG)),
                (_gl_consumer, (q_bufs, q_bar, k_bufs, v_bufs, ready, empty, turn, o_ptr, lse_ptr, idx_row,
                                bias_row, doc_ptr, n_lo, n_valid, b, hq0 + 2, i, so_b, so_h, so_t, T, Hq, qk_scale,
                                1, B, D, STAGES, HAS_BIAS, HAS_DOC, PINGPONG)),
                (_gl_loader, (k_desc, v_desc, k_bufs, v_bufs, ready, empty, idx_row, n_valid, b, h, B, STAGES)),
            ],
            [4, 1],
            [240, 24],
        )  # fmt: skip


def supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, B: int) -> bool:
    """Whether ``forward`` serves this call (else the Triton forward does): a Hopper GPU, D = 128, B = 64, a GQA
    group of 4, 8, 12, ... query heads, bf16/fp16, TMA-eligible strides."""
    if not (HAVE_GLUON and q.is_cuda and B == 64 and q.shape[-1] == 128):
        return False
    if torch.cuda.get_device_capability(q.device)[0] != 9 or q.shape[1] % (4 * k.shape[1]):
        return False
    if q.dtype not in (torch.bfloat16, torch.float16) or k.dtype != q.dtype or v.dtype != q.dtype:
        return False
    return all(
        x.stride(-1) == 1 and x.data_ptr() % 16 == 0 and all(st * x.element_size() % 16 == 0 for st in x.stride()[:-1])
        for x in (q, k, v)
    )


def _desc(x: torch.Tensor, box: list[int]):
    layout = gl.NVMMASharedLayout.get_default_for(box, gl.bfloat16 if x.dtype == torch.bfloat16 else gl.float16)
    return GluonDescriptor.from_tensor(x, box, layout)


def forward(q, k, v, indices, cnt, n_lo, block_bias, doc_ids, out, lse, B: int, qk_scale: float, stages: int = 2,
            pingpong: bool = False) -> None:  # fmt: skip
    """Fill out [Bt, Hq, T, D] and lse [Bt, Hq, T] (natural log) like ``triton._fwd_kernel``; qk_scale in log2 units.
    Call only where ``supported``; cnt / n_lo are ``triton._row_counts(indices)``."""
    Bt, Hq, T, D = q.shape
    Hkv, nb, S = k.shape[1], indices.shape[2], indices.shape[3]
    G = Hq // Hkv
    q_desc = _desc(q, [1, 2, B, D])
    k_desc = _desc(k, [1, 1, B, D])
    v_desc = _desc(v, [1, 1, B, D])
    bias = block_bias if block_bias is not None else lse  # never read without HAS_BIAS
    # 4 default warps + 4 + 1 worker warps = 12 warps (a warpgroup each): 168 registers a thread at launch, which
    # setmaxnreg hands out as 240 to each consumer warpgroup and 24 to the load warp's.
    _gl_fwd_kernel[(nb * (G // 4), Bt * Hkv)](
        q_desc, k_desc, v_desc, out, lse, indices, cnt, n_lo, bias, doc_ids if doc_ids is not None else cnt,
        out.stride(0), out.stride(1), out.stride(2), T, nb, S, Hkv, qk_scale, G=G, B=B, D=D, STAGES=stages,
        HAS_BIAS=block_bias is not None, HAS_DOC=doc_ids is not None, PINGPONG=pingpong, num_warps=4, maxnreg=168,
    )  # fmt: skip
