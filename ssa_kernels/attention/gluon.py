"""Hopper kernels of SSA block-sparse attention in Gluon, warp-specialised: the forward, the dQ pass and the dK/dV
pass of ``triton.py`` (same semantics as its kernels and as ``reference.sparse_attention``, the tests' oracle).

Why a second set: the Triton kernels run the softmax of a tile and its products one after the other in the same
warps (the forward at ~440 TFLOP/s on an H100; docs/kernels.md, "Why the forward's last 13% is hard"). Triton 3.6 does
not warp-specialise those loops on Hopper; Gluon (Triton's lower-level language, in the same package) lets a kernel
say it: FlashAttention-3's layout of the work, written by hand.

Forward (``_gl_fwd_kernel``), one program per (batch, kv head, R tokens of a query block, 2 x ``GL_HEADS`` query
heads):
- a load warp walks the index row and streams each listed block's K/V, ``GL_KEYS`` keys a step (R, or the whole
  128-key block), into a ring of ``STAGES`` shared-memory buffers by TMA (``ready`` / ``empty`` mbarriers per stage;
  ``empty`` counts both consumers' arrivals);
- two consumer warpgroups own ``GL_HEADS`` x R rows each and their own fp32 online softmax: while one waits on its
  tensor-core products the other's softmax issues, the overlap a single instruction stream cannot have.
  2 heads (one K/V load serves 4 heads) with 64-key steps; with ``PINGPONG`` the two take turns issuing S = Q K^T
  (FA3's warp-scheduler barrier; measured the same). 1 head with 128-key steps (the default at B = 128): a 64 x 128
  S tile leaves room for ``GL_OVERLAP``, FA3's intra-warpgroup overlap: S(n) and then P(n-1) V(n-1) are issued,
  step n's softmax runs while the second is on the tensor cores, and the accumulator is rescaled after it.
dQ pass (``_gl_dq_kernel``): two consumers of one head of R rows each (128-row consumers would need ~290 registers);
S = Q K^T and dP = dO V^T issued together, P from lse, dq += dS K, and the block-bias gradient as one partial per
query head; ``GL_KEYS`` keys a step, and with ``GL_OVERLAP`` (64-key steps) step n's softmax beside step n-1's
dq product.
dK/dV pass (``_gl_dkdv_kernel``): ``triton._kv_work``'s items (a key block's CSR piece each); the load warp streams
the (64 rows of a query block, head) slices of q and dO, and their rows' lse and delta (``row_stats``); keys are the
M side of every product (S^T = K Q^T: P^T and dS^T feed dv += P^T dO and dk += dS^T Q from registers). B = 64: the
two consumers take alternate slices into their own dk, dv, summed through shared memory at the end. B = 128: each
consumer holds one 64-key half of the block and takes every slice (one q / dO load for 128 keys). Split pieces write
fp32 partials for ``triton._reduce_kernel``.
The forward and dQ pass give each 64-token half of a query block its own program.

Scope: Hopper (sm_90), D = 128, B = 64 or 128, GQA groups of 4, 8, 12, ... query heads, bf16/fp16, TMA-eligible strides
(any layout with unit stride along D: HF's transposed q, k, v too), block bias and document mask as in Triton.
``supported`` says whether a call qualifies; ``triton.py`` takes these kernels by default where it does
(``CONFIG_OVERRIDE[kind]["GLUON"] = 0`` forces its own) and its own kernels otherwise. Gluon does not run in
Triton's CPU interpreter: the tests of these kernels run on a Hopper GPU only.

Measured (one H100, 1M tokens, the benchmark's selection; docs/kernels.md, "Thirtieth session" to "Thirty-second
session"): B = 64, forward 265-280 ms against the Triton forward's 324-332 ms, the whole backward 965-976 ms against
1,199-1,207 ms. B = 128 (the defaults above): forward kernel 231-234 ms, backward 768 ms (profiled: dK/dV 478, dQ 347).
"""

from __future__ import annotations

import torch
import triton

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

    # TMA load into shared memory: async_copy_global_to_shared in Triton 3.6 (the GPU image), async_load later (CI)
    _tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
    HAVE_GLUON = hasattr(gl, "warp_specialize")
except ImportError:  # pragma: no cover - depends on the installed triton
    HAVE_GLUON = False


if HAVE_GLUON:

    @gluon.jit
    def _gl_later(t, kpos, KEYS_FIRST: gl.constexpr):
        """Whether each key is at or before each query row's token ([rows, keys]; [keys, rows] with KEYS_FIRST)."""
        if KEYS_FIRST:
            return kpos[:, None] <= t[None, :]
        else:
            return t[:, None] >= kpos[None, :]

    @gluon.jit
    def _gl_masked(sc, t, kpos, doc_q, doc_k, CAUSAL: gl.constexpr, HAS_DOC: gl.constexpr,
                   KEYS_FIRST: gl.constexpr):  # fmt: skip
        """sc with -inf where the key at kpos is after the query row's token t (CAUSAL) or in another document
        (HAS_DOC): [rows, keys], or [keys, rows] with KEYS_FIRST (the dK/dV pass). ``triton._masked_scores``'s rule."""
        if HAS_DOC:
            if KEYS_FIRST:
                keep = doc_k[:, None] == doc_q[None, :]
            else:
                keep = doc_q[:, None] == doc_k[None, :]
            if CAUSAL:
                keep = keep & _gl_later(t, kpos, KEYS_FIRST)
        else:
            keep = _gl_later(t, kpos, KEYS_FIRST)
        return gl.where(keep, sc, float("-inf"))

    @gluon.jit
    def _gl_mask_block(sc, idx_row, e, sub, t, doc_q, doc_base, T, B: gl.constexpr, R: gl.constexpr,
                       CAUSAL: gl.constexpr, HAS_DOC: gl.constexpr, s_layout: gl.constexpr):  # fmt: skip
        """The masks of key sub-tile ``sub`` (R keys) of listed block e on a [rows, R] tile (forward, dQ pass); CAUSAL:
        the diagonal block (or a future one listed by mistake)."""
        if CAUSAL or HAS_DOC:
            k0 = gl.load(idx_row + e) * B + sub * R
            kpos = k0 + gl.arange(0, R, layout=gl.SliceLayout(0, s_layout))
            doc_k = kpos  # placeholder, unused without documents
            if HAS_DOC:
                doc_k = gl.load(doc_base + kpos, mask=kpos < T, other=-1).to(gl.int32)
            sc = _gl_masked(sc, t, kpos, doc_q, doc_k, CAUSAL, HAS_DOC, False)
        return sc

    @gluon.jit
    def _gl_bias_log2(bias_ptr, HAS_BIAS: gl.constexpr):
        """The listed block's bias in log2 units (0 without a bias): ``triton._bias_log2``."""
        if HAS_BIAS:
            return gl.load(bias_ptr).to(gl.float32) * 1.4426950408889634
        else:
            return 0.0

    @gluon.jit
    def _gl_loader(k_desc, v_desc, k_bufs, v_bufs, ready, empty, idx_row, n_valid, b, h,
                   B: gl.constexpr, R: gl.constexpr, STAGES: gl.constexpr):  # fmt: skip
        """One warp: K and V of step n (R keys: sub-tile n % (B / R) of listed block n // (B / R)) into stage
        n % STAGES once both consumers released it."""
        NSUB: gl.constexpr = B // R
        nbytes: gl.constexpr = 2 * k_desc.block_type.nbytes
        for n in range(n_valid * NSUB):
            s = n % STAGES
            ph = (n // STAGES) & 1
            k0 = gl.load(idx_row + n // NSUB).to(gl.int32) * B + (n % NSUB) * R
            mbarrier.wait(empty.index(s), ph ^ 1)  # fresh barriers count as phase 1 complete: the first pass is free
            mbarrier.expect(ready.index(s), nbytes)
            _tma_load(k_desc, [b, h, k0, 0], ready.index(s), k_bufs.index(s))
            _tma_load(v_desc, [b, h, k0, 0], ready.index(s), v_bufs.index(s))

    @gluon.jit
    def _gl_step(acc, l_i, m_i, q_s, k_bufs, v_bufs, ready, empty, turn, n, idx_row, bias_row, t, doc_q,
                 doc_base, T, qk_scale, C: gl.constexpr, B: gl.constexpr, KN: gl.constexpr, D: gl.constexpr,
                 STAGES: gl.constexpr,
                 CAUSAL: gl.constexpr, HAS_BIAS: gl.constexpr, HAS_DOC: gl.constexpr, PINGPONG: gl.constexpr,
                 s_layout: gl.constexpr,
                 o_layout: gl.constexpr, p_layout: gl.constexpr):  # fmt: skip
        """Step n: sub-tile n % (B / KN) (KN keys) of listed block e = n // (B / KN), for this consumer's rows:
        S = Q K^T, online softmax in base 2, acc += P V. (One loop over the steps, not a nested one over the sub-tiles:
        the unrolled pair of steps spills at B = 128.)"""
        M: gl.constexpr = q_s.shape[0]
        s = n % STAGES
        ph = (n // STAGES) & 1
        mbarrier.wait(ready.index(s), ph)
        k_t = k_bufs.index(s).reshape([KN, D]).permute((1, 0))  # [D, KN]
        if PINGPONG:  # consumer C issues its product after the other one's, in turn
            mbarrier.wait(turn.index(C), (n & 1) ^ (1 - C))
        sc = warpgroup_mma(q_s, k_t, gl.zeros([M, KN], gl.float32, layout=s_layout), use_acc=False,
                           is_async=True)  # fmt: skip
        if PINGPONG:
            mbarrier.arrive(turn.index(1 - C), count=1)
        sc = warpgroup_mma_wait(num_outstanding=0, deps=(sc,))
        p_op, alpha, l_i, m_new = _gl_softmax(sc, m_i, l_i, n, idx_row, bias_row, t, doc_q, doc_base, T, qk_scale, B,
                                              KN, CAUSAL, HAS_BIAS, HAS_DOC, s_layout, p_layout,
                                              v_bufs.dtype)  # fmt: skip
        acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))[:, None]
        v = v_bufs.index(s).reshape([KN, D])  # [KN, D]
        acc = warpgroup_mma(p_op, v, acc, is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        mbarrier.arrive(empty.index(s), count=1)
        return acc, l_i, m_new

    @gluon.jit
    def _gl_softmax(sc, m_i, l_i, n, idx_row, bias_row, t, doc_q, doc_base, T, qk_scale, B: gl.constexpr,
                    KN: gl.constexpr, CAUSAL: gl.constexpr, HAS_BIAS: gl.constexpr, HAS_DOC: gl.constexpr,
                    s_layout: gl.constexpr, p_layout: gl.constexpr, dtype: gl.constexpr):  # fmt: skip
        """Step n's online softmax in base 2 on its scores sc [rows, KN]: (P as the PV product's operand, the factor
        alpha of the rows' earlier sums, the new row sums, the new row maxima)."""
        NSUB: gl.constexpr = B // KN
        e = n // NSUB
        sc = _gl_mask_block(sc, idx_row, e, n % NSUB, t, doc_q, doc_base, T, B, KN, CAUSAL, HAS_DOC, s_layout)
        b2 = _gl_bias_log2(bias_row + e, HAS_BIAS)
        m_new = gl.maximum(m_i, gl.max(sc, 1) * qk_scale + b2)
        m_use = gl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet: never -inf - -inf
        p = gl.exp2(sc * qk_scale + (b2 - m_use)[:, None])
        alpha = gl.exp2(m_i - m_use)
        l_i = l_i * alpha + gl.sum(p, 1)
        return gl.convert_layout(p.to(dtype), p_layout), alpha, l_i, m_new

    @gluon.jit
    def _gl_ov_step(acc, l_i, m_i, p_prev, q_s, k_bufs, v_bufs, ready, empty, turn, n, idx_row, bias_row, t, doc_q,
                    doc_base, T, qk_scale, C: gl.constexpr, B: gl.constexpr, KN: gl.constexpr, D: gl.constexpr,
                    STAGES: gl.constexpr, CAUSAL: gl.constexpr, HAS_BIAS: gl.constexpr, HAS_DOC: gl.constexpr,
                    PINGPONG: gl.constexpr, s_layout: gl.constexpr, o_layout: gl.constexpr,
                    p_layout: gl.constexpr):  # fmt: skip
        """Step n with the previous step's P V in flight (FA3's intra-warpgroup overlap): S(n) = Q K(n)^T and then
        acc += P(n-1) V(n-1) issued, step n's softmax while the second runs, acc rescaled once it is done. Returns
        P(n) for the next step (or the epilogue) to multiply. With PINGPONG the two consumers take turns issuing
        their pair of products (FA3's inter-warpgroup schedule on top of the overlap)."""
        M: gl.constexpr = q_s.shape[0]
        s = n % STAGES
        sp = (n + STAGES - 1) % STAGES  # step n - 1's stage
        mbarrier.wait(ready.index(s), (n // STAGES) & 1)
        k_t = k_bufs.index(s).reshape([KN, D]).permute((1, 0))  # [D, KN]
        if PINGPONG:  # steps 1 .. N - 1 of both consumers alternate; consumer 1 goes first (parity as _gl_step's)
            mbarrier.wait(turn.index(C), (n & 1) ^ (1 - C))
        sc = warpgroup_mma(q_s, k_t, gl.zeros([M, KN], gl.float32, layout=s_layout), use_acc=False,
                           is_async=True)  # fmt: skip
        acc = warpgroup_mma(p_prev, v_bufs.index(sp).reshape([KN, D]), acc, is_async=True)
        if PINGPONG:
            mbarrier.arrive(turn.index(1 - C), count=1)
        sc = warpgroup_mma_wait(num_outstanding=1, deps=(sc,))  # in order: S(n) done, P(n-1) V(n-1) may still run
        p_op, alpha, l_i, m_new = _gl_softmax(sc, m_i, l_i, n, idx_row, bias_row, t, doc_q, doc_base, T, qk_scale, B,
                                              KN, CAUSAL, HAS_BIAS, HAS_DOC, s_layout, p_layout,
                                              v_bufs.dtype)  # fmt: skip
        acc, p_prev = warpgroup_mma_wait(num_outstanding=0, deps=(acc, p_prev))
        mbarrier.arrive(empty.index(sp), count=1)
        acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))[:, None]
        return acc, l_i, m_new, p_op

    @gluon.jit
    def _gl_consumer(q_bufs, q_bar, k_bufs, v_bufs, ready, empty, turn, o_ptr, lse_ptr, idx_row, bias_row, doc_ptr,
                     n_lo, n_valid, b, hq0, t0, so_b, so_h, so_t, T, Hq, qk_scale, C: gl.constexpr,
                     B: gl.constexpr, R: gl.constexpr, HPC: gl.constexpr, KN: gl.constexpr, D: gl.constexpr,
                     STAGES: gl.constexpr, HAS_BIAS: gl.constexpr, HAS_DOC: gl.constexpr,
                     PINGPONG: gl.constexpr, OVERLAP: gl.constexpr):  # fmt: skip
        """Warpgroup C: the HPC x R rows (tokens t0 .. t0 + R - 1) of query heads hq0 .. hq0 + HPC - 1 (head-major,
        then token) over every entry, KN keys a step."""
        M: gl.constexpr = HPC * R
        NSUB: gl.constexpr = B // KN
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, KN, 16])  # fmt: skip
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, D, 16])  # fmt: skip
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
        rows_s = gl.arange(0, M, layout=gl.SliceLayout(1, s_layout))
        t = t0 + rows_s % R  # [M] token of each row
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
        if OVERLAP:  # step 0 (masked: it may be the diagonal), then steps 1 .. N-1 each beside the last one's P V
            N = n_valid * NSUB
            if N > 0:
                mbarrier.wait(ready.index(0), 0)
                k_t = k_bufs.index(0).reshape([KN, D]).permute((1, 0))
                sc = warpgroup_mma(q_s, k_t, gl.zeros([M, KN], gl.float32, layout=s_layout), use_acc=False,
                                   is_async=True)  # fmt: skip
                sc = warpgroup_mma_wait(num_outstanding=0, deps=(sc,))
                p_op, _, l_i, m_i = _gl_softmax(sc, m_i, l_i, 0, idx_row, bias_row, t, doc_q, doc_base, T, qk_scale,
                                                B, KN, True, HAS_BIAS, HAS_DOC, s_layout, p_layout,
                                                v_bufs.dtype)  # fmt: skip
                for n in range(1, n_lo * NSUB):  # below the diagonal: no mask
                    acc, l_i, m_i, p_op = _gl_ov_step(acc, l_i, m_i, p_op, q_s, k_bufs, v_bufs, ready, empty, turn,
                                                      n, idx_row, bias_row, t, doc_q, doc_base, T, qk_scale, C, B, KN,
                                                      D, STAGES, False, HAS_BIAS, HAS_DOC, PINGPONG, s_layout,
                                                      o_layout, p_layout)  # fmt: skip
                for n in range(gl.maximum(n_lo * NSUB, 1), N):
                    acc, l_i, m_i, p_op = _gl_ov_step(acc, l_i, m_i, p_op, q_s, k_bufs, v_bufs, ready, empty, turn,
                                                      n, idx_row, bias_row, t, doc_q, doc_base, T, qk_scale, C, B, KN,
                                                      D, STAGES, True, HAS_BIAS, HAS_DOC, PINGPONG, s_layout,
                                                      o_layout, p_layout)  # fmt: skip
                sp = (N - 1) % STAGES
                acc = warpgroup_mma(p_op, v_bufs.index(sp).reshape([KN, D]), acc, is_async=True)
                acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
                mbarrier.arrive(empty.index(sp), count=1)
        else:
            for n in range(0, n_lo * NSUB):  # below the diagonal: no mask
                acc, l_i, m_i = _gl_step(acc, l_i, m_i, q_s, k_bufs, v_bufs, ready, empty, turn, n, idx_row,
                                         bias_row, t, doc_q, doc_base, T, qk_scale, C, B, KN, D, STAGES, False,
                                         HAS_BIAS, HAS_DOC, PINGPONG, s_layout, o_layout, p_layout)  # fmt: skip
            for n in range(n_lo * NSUB, n_valid * NSUB):
                acc, l_i, m_i = _gl_step(acc, l_i, m_i, q_s, k_bufs, v_bufs, ready, empty, turn, n, idx_row,
                                         bias_row, t, doc_q, doc_base, T, qk_scale, C, B, KN, D, STAGES, True,
                                         HAS_BIAS, HAS_DOC, PINGPONG, s_layout, o_layout, p_layout)  # fmt: skip

        empty_row = l_i == 0.0  # no visible key: out 0, lse -inf
        l_safe = gl.where(empty_row, 1.0, l_i)
        lse = gl.where(empty_row, float("-inf"), (m_i + gl.log2(l_safe)) * 0.6931471805599453)
        out = acc / gl.convert_layout(l_safe, gl.SliceLayout(1, o_layout))[:, None]
        rows_o = gl.arange(0, M, layout=gl.SliceLayout(1, o_layout))
        t_o = t0 + rows_o % R
        hq_o = hq0 + rows_o // R
        d = gl.arange(0, D, layout=gl.SliceLayout(0, o_layout))
        o_off = b.to(gl.int64) * so_b + hq_o.to(gl.int64) * so_h + t_o.to(gl.int64) * so_t
        ok = t_o < T
        gl.store(o_ptr + o_off[:, None] + d[None, :], out.to(o_ptr.dtype.element_ty), mask=ok[:, None])
        hq_s = hq0 + rows_s // R
        lse_off = (b.to(gl.int64) * Hq + hq_s) * T + t  # lse [Bt, Hq, T], contiguous
        gl.store(lse_ptr + lse_off, lse, mask=t < T)

    @gluon.jit
    def _gl_fwd_kernel(q_desc, k_desc, v_desc, o_ptr, lse_ptr, idx_ptr, cnt_ptr, nlo_ptr, bias_ptr, doc_ptr, so_b,
                       so_h, so_t, T, nb, S, Hkv, qk_scale, G: gl.constexpr, B: gl.constexpr, R: gl.constexpr,
                       HPC: gl.constexpr, KN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr,
                       HAS_BIAS: gl.constexpr, HAS_DOC: gl.constexpr, PINGPONG: gl.constexpr,
                       OVERLAP: gl.constexpr):  # fmt: skip
        SPLITS: gl.constexpr = G // (2 * HPC)  # programs per (R tokens of a query block, kv head): 2 HPC heads each
        NSUB: gl.constexpr = B // R
        pid = gl.program_id(0)
        i = nb - 1 - pid // (SPLITS * NSUB)  # longest index rows (late query blocks) first
        t0 = i * B + ((pid // SPLITS) % NSUB) * R  # the program's R tokens of query block i
        bh = gl.program_id(1)
        b = bh // Hkv
        h = bh % Hkv
        hq0 = h * G + (pid % SPLITS) * (2 * HPC)  # first of the program's 2 HPC query heads
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
        for c in gl.static_range(2):  # each consumer's HPC heads x R tokens in one box
            _tma_load(q_desc, [b, hq0 + HPC * c, t0, 0], q_bar, q_bufs.index(c))

        Hq = Hkv * G
        gl.warp_specialize(
            [
                (_gl_consumer, (q_bufs, q_bar, k_bufs, v_bufs, ready, empty, turn, o_ptr, lse_ptr, idx_row,
                                bias_row, doc_ptr, n_lo, n_valid, b, hq0, t0, so_b, so_h, so_t, T, Hq, qk_scale,
                                0, B, R, HPC, KN, D, STAGES, HAS_BIAS, HAS_DOC, PINGPONG, OVERLAP)),
                (_gl_consumer, (q_bufs, q_bar, k_bufs, v_bufs, ready, empty, turn, o_ptr, lse_ptr, idx_row,
                                bias_row, doc_ptr, n_lo, n_valid, b, hq0 + HPC, t0, so_b, so_h, so_t, T, Hq,
                                qk_scale, 1, B, R, HPC, KN, D, STAGES, HAS_BIAS, HAS_DOC, PINGPONG, OVERLAP)),
                (_gl_loader, (k_desc, v_desc, k_bufs, v_bufs, ready, empty, idx_row, n_valid, b, h, B, KN, STAGES)),
            ],
            [4, 1],
            [240, 24],
        )  # fmt: skip

    # ------------------------------------------------------------------------------------------------------------
    # dQ pass (and the block-bias gradient): the forward's partitions, P recomputed from lse
    # ------------------------------------------------------------------------------------------------------------

    @gluon.jit
    def _gl_dq_step(dq, q_s, do_s, k_bufs, v_bufs, ready, empty, e, sub, idx_row, b2, b2l, delta, t, doc_q,
                    doc_base, T, qk_scale, B: gl.constexpr, KN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr,
                    CAUSAL: gl.constexpr, WANT_DBIAS: gl.constexpr, HAS_DOC: gl.constexpr, s_layout: gl.constexpr,
                    a_layout: gl.constexpr):  # fmt: skip
        """Sub-tile ``sub`` (KN keys) of listed block e: S = Q K^T and dP = dO V^T issued together,
        P = exp2(S * scale + bias - lse), dS = P (dP - delta), dq += dS K. Returns dq and the sum of dS over the tile
        (the block's bias gradient, summed over its sub-tiles by the caller)."""
        M: gl.constexpr = q_s.shape[0]
        n = e * (B // KN) + sub  # step of the ring
        s = n % STAGES
        ph = (n // STAGES) & 1
        mbarrier.wait(ready.index(s), ph)
        k_s = k_bufs.index(s).reshape([KN, D])
        v_s = v_bufs.index(s).reshape([KN, D])
        zero = gl.zeros([M, KN], gl.float32, layout=s_layout)
        sc = warpgroup_mma(q_s, k_s.permute((1, 0)), zero, use_acc=False, is_async=True)
        dp = warpgroup_mma(do_s, v_s.permute((1, 0)), zero, use_acc=False, is_async=True)
        sc = warpgroup_mma_wait(num_outstanding=1, deps=(sc,))  # in order: S is done, dP may still run
        sc = _gl_mask_block(sc, idx_row, e, sub, t, doc_q, doc_base, T, B, KN, CAUSAL, HAS_DOC, s_layout)
        p = gl.exp2(sc * qk_scale + (b2l + b2)[:, None])  # lse = -inf rows (empty, past T): b2l = -inf, p = 0
        dp = warpgroup_mma_wait(num_outstanding=0, deps=(dp,))
        ds = p * (dp - delta[:, None])  # dL/d(logit), natural units
        part = 0.0
        if WANT_DBIAS:
            part = gl.sum(gl.sum(ds, 1), 0)
        dq = warpgroup_mma(gl.convert_layout(ds.to(k_bufs.dtype), a_layout), k_s, dq, is_async=True)
        dq = warpgroup_mma_wait(num_outstanding=0, deps=(dq,))
        mbarrier.arrive(empty.index(s), count=1)
        return dq, part

    @gluon.jit
    def _gl_dq_ov_step(dq, ds_prev, dbias, q_s, do_s, k_bufs, v_bufs, ready, empty, n, idx_row, bias_row, dbias_row,
                       b2l, delta, t, doc_q, doc_base, T, qk_scale, B: gl.constexpr, KN: gl.constexpr,
                       D: gl.constexpr, STAGES: gl.constexpr, CAUSAL: gl.constexpr, HAS_BIAS: gl.constexpr,
                       WANT_DBIAS: gl.constexpr, HAS_DOC: gl.constexpr, FIRST: gl.constexpr, s_layout: gl.constexpr,
                       a_layout: gl.constexpr):  # fmt: skip
        """Step n of the flat step loop (sub-tile n % (B / KN) of listed block n // (B / KN)) with the previous step's
        dq += dS K in flight (unless FIRST): S(n) and dP(n) issued, then dq += dS(n-1) K(n-1); P(n) and dS(n) while
        the last two run. Returns dq, dS(n) as the next product's operand and the block's running bias-gradient sum
        (stored, and restarted, at the block's last sub-tile)."""
        M: gl.constexpr = q_s.shape[0]
        NSUB: gl.constexpr = B // KN
        e = n // NSUB
        s = n % STAGES
        sp = (n + STAGES - 1) % STAGES  # step n - 1's stage
        mbarrier.wait(ready.index(s), (n // STAGES) & 1)
        k_s = k_bufs.index(s).reshape([KN, D])
        v_s = v_bufs.index(s).reshape([KN, D])
        zero = gl.zeros([M, KN], gl.float32, layout=s_layout)
        sc = warpgroup_mma(q_s, k_s.permute((1, 0)), zero, use_acc=False, is_async=True)
        dp = warpgroup_mma(do_s, v_s.permute((1, 0)), zero, use_acc=False, is_async=True)
        if not FIRST:
            dq = warpgroup_mma(ds_prev, k_bufs.index(sp).reshape([KN, D]), dq, is_async=True)
        sc = warpgroup_mma_wait(num_outstanding=1 if FIRST else 2, deps=(sc,))  # in order: S done, the rest may run
        sc = _gl_mask_block(sc, idx_row, e, n % NSUB, t, doc_q, doc_base, T, B, KN, CAUSAL, HAS_DOC, s_layout)
        b2 = _gl_bias_log2(bias_row + e, HAS_BIAS)
        p = gl.exp2(sc * qk_scale + (b2l + b2)[:, None])  # lse = -inf rows (empty, past T): b2l = -inf, p = 0
        dp = warpgroup_mma_wait(num_outstanding=0 if FIRST else 1, deps=(dp,))
        ds = p * (dp - delta[:, None])  # dL/d(logit), natural units
        if WANT_DBIAS:
            dbias = dbias + gl.sum(gl.sum(ds, 1), 0)
            last = n % NSUB == NSUB - 1
            gl.store(dbias_row + e, dbias, mask=last)
            dbias = gl.where(last, 0.0, dbias)
        ds_op = gl.convert_layout(ds.to(k_bufs.dtype), a_layout)
        if not FIRST:
            dq, ds_prev = warpgroup_mma_wait(num_outstanding=0, deps=(dq, ds_prev))
            mbarrier.arrive(empty.index(sp), count=1)
        return dq, ds_op, dbias

    @gluon.jit
    def _gl_dq_entry(dq, q_s, do_s, k_bufs, v_bufs, ready, empty, e, idx_row, bias_row, dbias_row, b2l, delta, t,
                     doc_q, doc_base, T, qk_scale, B: gl.constexpr, KN: gl.constexpr, D: gl.constexpr,
                     STAGES: gl.constexpr, CAUSAL: gl.constexpr, HAS_BIAS: gl.constexpr, WANT_DBIAS: gl.constexpr,
                     HAS_DOC: gl.constexpr, s_layout: gl.constexpr, a_layout: gl.constexpr):  # fmt: skip
        """Listed block e, B / KN sub-tiles: dq, and its bias gradient over these rows stored. (Unrolled, unlike the
        forward's steps: at B = 128 the pair compiles without spills here under Triton 3.6, and the bias sum of the
        block stays in a register.)"""
        b2 = _gl_bias_log2(bias_row + e, HAS_BIAS)
        dbias = 0.0
        for sub in gl.static_range(B // KN):
            dq, part = _gl_dq_step(dq, q_s, do_s, k_bufs, v_bufs, ready, empty, e, sub, idx_row, b2, b2l, delta, t,
                                   doc_q, doc_base, T, qk_scale, B, KN, D, STAGES, CAUSAL, WANT_DBIAS, HAS_DOC,
                                   s_layout, a_layout)  # fmt: skip
            dbias = dbias + part
        if WANT_DBIAS:
            gl.store(dbias_row + e, dbias)
        return dq

    @gluon.jit
    def _gl_dq_consumer(q_bufs, do_bufs, o_bufs, q_bar, k_bufs, v_bufs, ready, empty, dq_ptr, lse_ptr, delta_ptr,
                        dlse_ptr, st_ptr, idx_row, bias_row, dbias_row, doc_ptr, n_lo, n_valid, b, hq0, t0, sdq_b,
                        sdq_h, sdq_t, T, Tp, Hq, S, qk_scale, sm_scale, C: gl.constexpr, HPC: gl.constexpr,
                        B: gl.constexpr, R: gl.constexpr, KN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr,
                        S_P2: gl.constexpr, HAS_BIAS: gl.constexpr, WANT_DBIAS: gl.constexpr, WANT_DQ: gl.constexpr,
                        HAS_DOC: gl.constexpr, OVERLAP: gl.constexpr, FUSE_DELTA: gl.constexpr,
                        HAS_DLSE: gl.constexpr):  # fmt: skip
        """Warpgroup C: the HPC x R rows (tokens t0 .. t0 + R - 1) of query heads hq0 .. hq0 + HPC - 1 over every
        listed block, KN keys a step (R or B); with OVERLAP each step's softmax beside the previous step's dq
        product. FUSE_DELTA: the rows' delta = rowsum(dO * O) - dlse from the dO and O tiles in shared memory (not
        from ``triton._delta_kernel``), and their ``row_stats`` written for the dK/dV pass."""
        M: gl.constexpr = HPC * R
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, KN, 16])  # fmt: skip
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, D, 16])  # fmt: skip
        a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
        rows = gl.arange(0, M, layout=gl.SliceLayout(1, s_layout))
        t = t0 + rows % R
        ok = t < T
        lrow = (b.to(gl.int64) * Hq + hq0 + rows // R) * T + t
        lse = gl.load(lse_ptr + lrow, mask=ok, other=float("-inf"))
        b2l = gl.where(lse == float("-inf"), float("-inf"), -lse * 1.4426950408889634)
        doc_base = doc_ptr + b.to(gl.int64) * T
        if HAS_DOC:
            doc_q = gl.load(doc_base + t, mask=ok, other=-1).to(gl.int32)
        else:
            doc_q = t
        q_s = q_bufs.index(C).reshape([M, D])
        do_s = do_bufs.index(C).reshape([M, D])
        if FUSE_DELTA:
            dl = 0.0
            if HAS_DLSE:
                dl = gl.load(dlse_ptr + lrow, mask=ok, other=0.0)
            mbarrier.wait(q_bar, 0)
            rd: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])  # 16-byte rows of the tiles
            o_t = o_bufs.index(C).reshape([M, D]).load(rd).to(gl.float32)
            prod = gl.sum(o_t * do_s.load(rd).to(gl.float32), 1)  # [M]; rows past T: zeros (TMA fills them)
            delta = gl.convert_layout(prod, gl.SliceLayout(1, s_layout)) - dl
            # row_stats' columns t of this program's heads: lse in log2 units (+inf: p = 0), delta (0 past T)
            srow = (b.to(gl.int64) * Hq + hq0 + rows // R) * 2 * Tp + t
            gl.store(st_ptr + srow, gl.where(b2l == float("-inf"), float("inf"), -b2l), mask=t < Tp)
            gl.store(st_ptr + srow + Tp, gl.where(ok, delta, 0.0), mask=t < Tp)
        else:
            delta = gl.load(delta_ptr + lrow, mask=ok, other=0.0)
            mbarrier.wait(q_bar, 0)
        dq = gl.zeros([M, D], gl.float32, layout=o_layout)
        # OVERLAP: step 0 (masked: it may be the diagonal), then steps 1 .. N-1 each beside the last one's dq product
        if OVERLAP:
            NSUB: gl.constexpr = B // KN
            N = n_valid * NSUB
            if N > 0:
                ds_op = gl.zeros([M, KN], k_bufs.dtype, layout=a_layout)  # no product before step 0
                dq, ds_op, dbias = _gl_dq_ov_step(dq, ds_op, 0.0, q_s, do_s, k_bufs, v_bufs, ready, empty, 0, idx_row,
                                                  bias_row, dbias_row, b2l, delta, t, doc_q, doc_base, T, qk_scale, B,
                                                  KN, D, STAGES, True, HAS_BIAS, WANT_DBIAS, HAS_DOC, True, s_layout,
                                                  a_layout)  # fmt: skip
                for n in range(1, n_lo * NSUB):  # below the diagonal: no mask
                    dq, ds_op, dbias = _gl_dq_ov_step(dq, ds_op, dbias, q_s, do_s, k_bufs, v_bufs, ready, empty, n,
                                                      idx_row, bias_row, dbias_row, b2l, delta, t, doc_q, doc_base, T,
                                                      qk_scale, B, KN, D, STAGES, False, HAS_BIAS, WANT_DBIAS,
                                                      HAS_DOC, False, s_layout, a_layout)  # fmt: skip
                for n in range(gl.maximum(n_lo * NSUB, 1), N):
                    dq, ds_op, dbias = _gl_dq_ov_step(dq, ds_op, dbias, q_s, do_s, k_bufs, v_bufs, ready, empty, n,
                                                      idx_row, bias_row, dbias_row, b2l, delta, t, doc_q, doc_base, T,
                                                      qk_scale, B, KN, D, STAGES, True, HAS_BIAS, WANT_DBIAS, HAS_DOC,
                                                      False, s_layout, a_layout)  # fmt: skip
                sp = (N - 1) % STAGES
                dq = warpgroup_mma(ds_op, k_bufs.index(sp).reshape([KN, D]), dq, is_async=True)
                dq = warpgroup_mma_wait(num_outstanding=0, deps=(dq,))
                mbarrier.arrive(empty.index(sp), count=1)
        else:
            for e in range(0, n_lo):
                dq = _gl_dq_entry(dq, q_s, do_s, k_bufs, v_bufs, ready, empty, e, idx_row, bias_row, dbias_row, b2l,
                                  delta, t, doc_q, doc_base, T, qk_scale, B, KN, D, STAGES, False, HAS_BIAS,
                                  WANT_DBIAS, HAS_DOC, s_layout, a_layout)  # fmt: skip
            for e in range(n_lo, n_valid):
                dq = _gl_dq_entry(dq, q_s, do_s, k_bufs, v_bufs, ready, empty, e, idx_row, bias_row, dbias_row, b2l,
                                  delta, t, doc_q, doc_base, T, qk_scale, B, KN, D, STAGES, True, HAS_BIAS,
                                  WANT_DBIAS, HAS_DOC, s_layout, a_layout)  # fmt: skip
        if WANT_DBIAS:  # padding slots: exact zeros, as in the reference
            offs_s = gl.arange(0, S_P2, layout=gl.BlockedLayout([1], [32], [4], [0]))
            gl.store(dbias_row + offs_s, gl.zeros([S_P2], gl.float32, layout=gl.BlockedLayout([1], [32], [4], [0])),
                     mask=(offs_s >= n_valid) & (offs_s < S))  # fmt: skip
        if WANT_DQ:
            rows_o = gl.arange(0, M, layout=gl.SliceLayout(1, o_layout))
            t_o = t0 + rows_o % R
            d = gl.arange(0, D, layout=gl.SliceLayout(0, o_layout))
            off = b.to(gl.int64) * sdq_b + (hq0 + rows_o // R).to(gl.int64) * sdq_h + t_o.to(gl.int64) * sdq_t
            gl.store(dq_ptr + off[:, None] + d[None, :], (dq * sm_scale).to(dq_ptr.dtype.element_ty),
                     mask=(t_o < T)[:, None])  # fmt: skip

    @gluon.jit
    def _gl_dq_kernel(q_desc, do_desc, o_desc, k_desc, v_desc, dq_ptr, lse_ptr, delta_ptr, dlse_ptr, st_ptr, idx_ptr,
                      cnt_ptr, nlo_ptr, bias_ptr, dbias_ptr, doc_ptr, sdq_b, sdq_h, sdq_t, T, Tp, nb, S, Hkv, n_sel,
                      qk_scale, sm_scale, G: gl.constexpr, B: gl.constexpr, R: gl.constexpr, KN: gl.constexpr,
                      D: gl.constexpr, HPC: gl.constexpr, STAGES: gl.constexpr, S_P2: gl.constexpr,
                      HAS_BIAS: gl.constexpr, WANT_DBIAS: gl.constexpr, WANT_DQ: gl.constexpr, HAS_DOC: gl.constexpr,
                      OVERLAP: gl.constexpr, FUSE_DELTA: gl.constexpr, HAS_DLSE: gl.constexpr):  # fmt: skip
        PER: gl.constexpr = 2 * HPC  # query heads per program
        SPLITS: gl.constexpr = G // PER
        NSUB: gl.constexpr = B // R
        pid = gl.program_id(0)
        i = nb - 1 - pid // (SPLITS * NSUB)
        part = pid % (SPLITS * NSUB)  # (R tokens of query block i, query heads) of this program
        t0 = i * B + (part // SPLITS) * R
        bh = gl.program_id(1)
        b = bh // Hkv
        h = bh % Hkv
        hq0 = h * G + (part % SPLITS) * PER
        sel = bh.to(gl.int64) * nb + i
        n_valid = gl.load(cnt_ptr + sel)
        n_lo = gl.load(nlo_ptr + sel)
        idx_row = idx_ptr + sel * S
        bias_row = bias_ptr + sel * S
        ms = part * 2  # bias-gradient partial of consumer 0 (consumer 1: ms + 1); G * B / R / HPC of them

        q_bufs = gl.allocate_shared_memory(q_desc.dtype, [2] + q_desc.block_type.shape, q_desc.layout)
        do_bufs = gl.allocate_shared_memory(do_desc.dtype, [2] + do_desc.block_type.shape, do_desc.layout)
        o_bufs = do_bufs  # never read without FUSE_DELTA
        if FUSE_DELTA:
            o_bufs = gl.allocate_shared_memory(o_desc.dtype, [2] + o_desc.block_type.shape, o_desc.layout)
        k_bufs = gl.allocate_shared_memory(k_desc.dtype, [STAGES] + k_desc.block_type.shape, k_desc.layout)
        v_bufs = gl.allocate_shared_memory(v_desc.dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout)
        q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        mbarrier.init(q_bar, count=1)
        for s in gl.static_range(STAGES):
            mbarrier.init(ready.index(s), count=1)
            mbarrier.init(empty.index(s), count=2)
        mbarrier.expect(q_bar, (4 + 2 * FUSE_DELTA) * q_desc.block_type.nbytes)  # q, dO (and O): boxes of one shape
        for c in gl.static_range(2):
            _tma_load(q_desc, [b, hq0 + HPC * c, t0, 0], q_bar, q_bufs.index(c))
            _tma_load(do_desc, [b, hq0 + HPC * c, t0, 0], q_bar, do_bufs.index(c))
            if FUSE_DELTA:
                _tma_load(o_desc, [b, hq0 + HPC * c, t0, 0], q_bar, o_bufs.index(c))

        Hq = Hkv * G
        gl.warp_specialize(
            [
                (_gl_dq_consumer, (q_bufs, do_bufs, o_bufs, q_bar, k_bufs, v_bufs, ready, empty, dq_ptr, lse_ptr,
                                   delta_ptr, dlse_ptr, st_ptr, idx_row, bias_row, dbias_ptr + (ms * n_sel + sel) * S,
                                   doc_ptr, n_lo, n_valid, b, hq0, t0, sdq_b, sdq_h, sdq_t, T, Tp, Hq, S, qk_scale,
                                   sm_scale, 0, HPC, B, R, KN, D, STAGES, S_P2, HAS_BIAS, WANT_DBIAS, WANT_DQ, HAS_DOC,
                                   OVERLAP, FUSE_DELTA, HAS_DLSE)),
                (_gl_dq_consumer, (q_bufs, do_bufs, o_bufs, q_bar, k_bufs, v_bufs, ready, empty, dq_ptr, lse_ptr,
                                   delta_ptr, dlse_ptr, st_ptr, idx_row, bias_row,
                                   dbias_ptr + ((ms + 1) * n_sel + sel) * S, doc_ptr, n_lo, n_valid, b, hq0 + HPC, t0,
                                   sdq_b, sdq_h, sdq_t, T, Tp, Hq, S, qk_scale, sm_scale, 1, HPC, B, R, KN, D, STAGES,
                                   S_P2, HAS_BIAS, WANT_DBIAS, WANT_DQ, HAS_DOC, OVERLAP, FUSE_DELTA, HAS_DLSE)),
                (_gl_loader, (k_desc, v_desc, k_bufs, v_bufs, ready, empty, idx_row, n_valid, b, h, B, KN, STAGES)),
            ],
            [4, 1],
            [240, 24],
        )  # fmt: skip

    # ------------------------------------------------------------------------------------------------------------
    # dK/dV pass: key-block major through the CSR of ``triton._kv_work``; keys as the M side of every product
    # ------------------------------------------------------------------------------------------------------------

    @gluon.jit
    def _gl_kv_slice(it, csr_ptr, sel0, h, S, G: gl.constexpr, B: gl.constexpr, R: gl.constexpr):
        """Slice ``it`` of a key block's list (G * B / R slices an entry): its entry's flat position in indices
        (((b*Hkv + h)*nb + i)*S + slot), query head and first query token."""
        GN: gl.constexpr = G * (B // R)
        pos = gl.load(csr_ptr + it // GN)
        i = (pos // S - sel0).to(gl.int32)
        rem = it % GN
        return pos, h * G + rem % G, i * B + (rem // G) * R

    @gluon.jit
    def _gl_kv_loader(q_desc, do_desc, st_desc, q_bufs, do_bufs, st_bufs, ready, empty, csr_ptr, lo, hi, sel0, b,
                      h, Hq, S, G: gl.constexpr, B: gl.constexpr, R: gl.constexpr, STAGES: gl.constexpr):  # fmt: skip
        """One warp: the q and dO slices (R rows of one query head of a listed query block; G * B / R slices an
        entry) of slices [lo, hi) and their rows' statistics (``row_stats``) into the ring, slice j of the program
        into stage j % STAGES."""
        nbytes: gl.constexpr = 2 * q_desc.block_type.nbytes + st_desc.block_type.nbytes
        for it in range(lo, hi):
            j = it - lo
            s = j % STAGES
            _, hq, t0 = _gl_kv_slice(it, csr_ptr, sel0, h, S, G, B, R)
            mbarrier.wait(empty.index(s), ((j // STAGES) & 1) ^ 1)
            mbarrier.expect(ready.index(s), nbytes)
            _tma_load(q_desc, [b, hq, t0, 0], ready.index(s), q_bufs.index(s))
            _tma_load(do_desc, [b, hq, t0, 0], ready.index(s), do_bufs.index(s))
            _tma_load(st_desc, [(b * Hq + hq) * 2, t0], ready.index(s), st_bufs.index(s))

    @gluon.jit
    def _gl_kv_step(dk, dv, k_s, v_s, q_bufs, do_bufs, st_bufs, ready, empty, it, lo, csr_ptr, sel0, kpos, doc_k,
                    bias_ptr, doc_base, h, T, S, qk_scale, G: gl.constexpr, B: gl.constexpr, R: gl.constexpr,
                    D: gl.constexpr, STAGES: gl.constexpr, CAUSAL: gl.constexpr, HAS_BIAS: gl.constexpr,
                    HAS_DOC: gl.constexpr, st_layout: gl.constexpr, a_layout: gl.constexpr):  # fmt: skip
        """One slice (R query rows of one head of a listed query block) against this consumer's R keys: S^T = K Q^T
        and dP^T = V dO^T issued together, P^T from lse, dv += P^T dO, dS^T = P^T (dP^T - delta), dk += dS^T Q.
        The rows' lse and delta come with q and dO (``row_stats``): loaded here from global memory, they stalled
        every slice on two dependent loads (the CSR entry, then the rows) before its first product. Only the
        diagonal entries (CAUSAL), documents and a block bias still read global memory here.
        (Taking turns issuing at B = 2R, as the forward's PINGPONG, measured slower: docs/kernels.md.)"""
        j = it - lo
        s = j % STAGES
        rows: gl.constexpr = gl.SliceLayout(0, st_layout)  # [R] query rows (the columns of S^T)
        b2 = 0.0
        if CAUSAL or HAS_DOC or HAS_BIAS:
            pos, hq, t0 = _gl_kv_slice(it, csr_ptr, sel0, h, S, G, B, R)
            t = t0 + gl.arange(0, R, layout=rows)
            b2 = _gl_bias_log2(bias_ptr + pos, HAS_BIAS)
        mbarrier.wait(ready.index(s), (j // STAGES) & 1)
        # [1, R] each, broadcast over the keys (an NVMMA shared layout keeps rank 2: no [R] view of one row)
        lse2 = st_bufs.index(s).slice(0, 1, dim=0).load(st_layout)  # lse in log2 units; +inf where p = 0
        delta = st_bufs.index(s).slice(1, 1, dim=0).load(st_layout)
        b2l = b2 - lse2
        q_s = q_bufs.index(s).reshape([R, D])
        do_s = do_bufs.index(s).reshape([R, D])
        zero = gl.zeros([R, R], gl.float32, layout=st_layout)
        sct = warpgroup_mma(k_s, q_s.permute((1, 0)), zero, use_acc=False, is_async=True)
        dpt = warpgroup_mma(v_s, do_s.permute((1, 0)), zero, use_acc=False, is_async=True)
        sct = warpgroup_mma_wait(num_outstanding=1, deps=(sct,))
        if CAUSAL or HAS_DOC:
            doc_q = t  # placeholder, unused without documents
            if HAS_DOC:
                doc_q = gl.load(doc_base + t, mask=t < T, other=-1).to(gl.int32)
            sct = _gl_masked(sct, t, kpos, doc_q, doc_k, CAUSAL, HAS_DOC, True)
        pt = gl.exp2(sct * qk_scale + b2l)  # [R keys, R rows]
        pt_op = gl.convert_layout(pt.to(q_bufs.dtype), a_layout)
        dv = warpgroup_mma(pt_op, do_s, dv, is_async=True)
        dpt = warpgroup_mma_wait(num_outstanding=1, deps=(dpt,))  # in order: dP^T done, dv may still run
        dst = pt * (dpt - delta)
        ds_op = gl.convert_layout(dst.to(q_bufs.dtype), a_layout)
        dk = warpgroup_mma(ds_op, q_s, dk, is_async=True)
        dk, dv, pt_op, ds_op = warpgroup_mma_wait(num_outstanding=0, deps=(dk, dv, pt_op, ds_op))
        mbarrier.arrive(empty.index(s), count=1)
        return dk, dv

    @gluon.jit
    def _gl_kv_consumer(k_s, v_s, kv_bar, q_bufs, do_bufs, st_bufs, ready, empty, red, red_bar, csr_ptr,
                        bias_ptr, doc_ptr, dk_ptr, dv_ptr, dkp_ptr, dvp_ptr, start, mid, end, slot, sel0, b, h, kb,
                        sdk_b, sdk_h, sdk_t, sdv_b, sdv_h, sdv_t, T, S, Hq, qk_scale, sm_scale, C: gl.constexpr,
                        G: gl.constexpr, B: gl.constexpr, R: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr,
                        HAS_BIAS: gl.constexpr, HAS_DOC: gl.constexpr):  # fmt: skip
        """Warpgroup C. B = R (one key sub-block): slices C, C + 2, C + 4, ... of the program's entries into its own
        dk, dv; consumer 1 hands its sums to consumer 0 through shared memory, which writes the key block. B = 2R:
        every slice, against key sub-block C (keys kb * B + C * R ...): the two share each q / dO load and write
        their own rows."""
        NSUB: gl.constexpr = B // R
        GN: gl.constexpr = G * NSUB  # slices an entry
        KOFF: gl.constexpr = (C % NSUB) * R  # this consumer's first key within the block
        FIRST: gl.constexpr = C * (2 - NSUB)  # B = R: alternate slices (C, C + 2, ...); B = 2R: all of them
        STEP: gl.constexpr = 2 // NSUB
        st_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                            instr_shape=[16, R, 16])  # fmt: skip
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, D, 16])  # fmt: skip
        a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
        kpos = kb * B + KOFF + gl.arange(0, R, layout=gl.SliceLayout(1, st_layout))  # [R] keys (rows here)
        doc_base = doc_ptr + b.to(gl.int64) * T
        if HAS_DOC:
            doc_k = gl.load(doc_base + kpos, mask=kpos < T, other=-1).to(gl.int32)
        else:
            doc_k = kpos
        lo = start * GN
        k_c = k_s.index(C % NSUB).reshape([R, D])
        v_c = v_s.index(C % NSUB).reshape([R, D])
        mbarrier.wait(kv_bar, 0)
        dk = gl.zeros([R, D], gl.float32, layout=o_layout)
        dv = gl.zeros([R, D], gl.float32, layout=o_layout)
        for it in range(lo + FIRST, mid * GN, STEP):  # query blocks <= kb: the causal mask
            dk, dv = _gl_kv_step(dk, dv, k_c, v_c, q_bufs, do_bufs, st_bufs, ready, empty, it, lo, csr_ptr, sel0,
                                 kpos, doc_k, bias_ptr, doc_base, h, T, S, qk_scale, G, B, R, D, STAGES,
                                 True, HAS_BIAS, HAS_DOC, st_layout, a_layout)  # fmt: skip
        for it in range(mid * GN + FIRST, end * GN, STEP):
            dk, dv = _gl_kv_step(dk, dv, k_c, v_c, q_bufs, do_bufs, st_bufs, ready, empty, it, lo, csr_ptr, sel0,
                                 kpos, doc_k, bias_ptr, doc_base, h, T, S, qk_scale, G, B, R, D, STAGES,
                                 False, HAS_BIAS, HAS_DOC, st_layout, a_layout)  # fmt: skip
        if NSUB == 1:  # the two consumers' partial sums of the one key block: consumer 0 adds and writes them
            if C == 1:
                red.index(0).store(dk)
                red.index(1).store(dv)
                mbarrier.arrive(red_bar, count=1)
            else:
                mbarrier.wait(red_bar, 0)
                dk = dk + red.index(0).load(o_layout)
                dv = dv + red.index(1).load(o_layout)
        if NSUB > 1 or C == 0:
            dk = dk * sm_scale
            rows = KOFF + gl.arange(0, R, layout=gl.SliceLayout(1, o_layout))  # rows of the key block
            d = gl.arange(0, D, layout=gl.SliceLayout(0, o_layout))
            kp = kb * B + rows
            if slot < 0:  # this program owns the key block: dk, dv in the input dtype
                k_ok = (kp < T)[:, None]
                off_k = b.to(gl.int64) * sdk_b + h.to(gl.int64) * sdk_h + kp.to(gl.int64) * sdk_t
                off_v = b.to(gl.int64) * sdv_b + h.to(gl.int64) * sdv_h + kp.to(gl.int64) * sdv_t
                gl.store(dk_ptr + off_k[:, None] + d[None, :], dk.to(dk_ptr.dtype.element_ty), mask=k_ok)
                gl.store(dv_ptr + off_v[:, None] + d[None, :], dv.to(dv_ptr.dtype.element_ty), mask=k_ok)
            else:  # a piece of a split list: fp32 partials [B, D], summed by triton._reduce_kernel
                off = slot * (B * D) + rows[:, None] * D + d[None, :]
                gl.store(dkp_ptr + off, dk)
                gl.store(dvp_ptr + off, dv)

    @gluon.jit
    def _gl_dkdv_kernel(q_desc, do_desc, k_desc, v_desc, st_desc, dk_ptr, dv_ptr, dkp_ptr, dvp_ptr, items_ptr,
                        csr_ptr, bias_ptr, doc_ptr, sdk_b, sdk_h, sdk_t, sdv_b, sdv_h, sdv_t, T, nb, S,
                        Hkv, qk_scale, sm_scale, G: gl.constexpr, B: gl.constexpr, R: gl.constexpr, D: gl.constexpr,
                        STAGES: gl.constexpr, HAS_BIAS: gl.constexpr, HAS_DOC: gl.constexpr):  # fmt: skip
        NSUB: gl.constexpr = B // R
        item = items_ptr + gl.program_id(0).to(gl.int64) * 5  # (key block, start, mid, end, partial slot)
        kbf = gl.load(item)  # (b*Hkv + h)*nb + kb
        start = gl.load(item + 1).to(gl.int32)  # CSR entries (x G * B / R slices) stay below 2^31
        mid = gl.load(item + 2).to(gl.int32)  # entries [start, mid) have query block <= kb: causal mask
        end = gl.load(item + 3).to(gl.int32)
        slot = gl.load(item + 4)  # -1: this program owns the block; else index of its fp32 partial
        bh = kbf // nb
        kb = (kbf % nb).to(gl.int32)
        b = (bh // Hkv).to(gl.int32)
        h = (bh % Hkv).to(gl.int32)
        sel0 = bh * nb

        k_s = gl.allocate_shared_memory(k_desc.dtype, [NSUB] + k_desc.block_type.shape, k_desc.layout)
        v_s = gl.allocate_shared_memory(v_desc.dtype, [NSUB] + v_desc.block_type.shape, v_desc.layout)
        q_bufs = gl.allocate_shared_memory(q_desc.dtype, [STAGES] + q_desc.block_type.shape, q_desc.layout)
        do_bufs = gl.allocate_shared_memory(do_desc.dtype, [STAGES] + do_desc.block_type.shape, do_desc.layout)
        st_bufs = gl.allocate_shared_memory(st_desc.dtype, [STAGES] + st_desc.block_type.shape, st_desc.layout)
        kv_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        red_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        if NSUB == 1:  # consumer 1's dk, dv for consumer 0 (B = 2R: no reduction, and no room for one)
            red_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([R, D], gl.float32)
            red = gl.allocate_shared_memory(gl.float32, [2, R, D], red_layout)
        else:
            red = red_bar  # unused
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        mbarrier.init(kv_bar, count=1)
        mbarrier.init(red_bar, count=1)
        for s in gl.static_range(STAGES):
            mbarrier.init(ready.index(s), count=1)
            mbarrier.init(empty.index(s), count=NSUB)  # B = R: one consumer a slice; B = 2R: both
        mbarrier.expect(kv_bar, 2 * NSUB * k_desc.block_type.nbytes)
        for c in gl.static_range(NSUB):
            _tma_load(k_desc, [b, h, kb * B + c * R, 0], kv_bar, k_s.index(c))
            _tma_load(v_desc, [b, h, kb * B + c * R, 0], kv_bar, v_s.index(c))
        Hq = Hkv * G
        gl.warp_specialize(
            [
                (_gl_kv_consumer, (k_s, v_s, kv_bar, q_bufs, do_bufs, st_bufs, ready, empty, red, red_bar, csr_ptr,
                                   bias_ptr, doc_ptr, dk_ptr, dv_ptr, dkp_ptr, dvp_ptr, start, mid, end, slot, sel0,
                                   b, h, kb, sdk_b, sdk_h, sdk_t, sdv_b, sdv_h, sdv_t, T, S, Hq, qk_scale, sm_scale,
                                   0, G, B, R, D, STAGES, HAS_BIAS, HAS_DOC)),
                (_gl_kv_consumer, (k_s, v_s, kv_bar, q_bufs, do_bufs, st_bufs, ready, empty, red, red_bar, csr_ptr,
                                   bias_ptr, doc_ptr, dk_ptr, dv_ptr, dkp_ptr, dvp_ptr, start, mid, end, slot, sel0,
                                   b, h, kb, sdk_b, sdk_h, sdk_t, sdv_b, sdv_h, sdv_t, T, S, Hq, qk_scale, sm_scale,
                                   1, G, B, R, D, STAGES, HAS_BIAS, HAS_DOC)),
                (_gl_kv_loader, (q_desc, do_desc, st_desc, q_bufs, do_bufs, st_bufs, ready, empty, csr_ptr,
                                 start * G * NSUB, end * G * NSUB, sel0, b, h, Hq, S, G, B, R, STAGES)),
            ],
            [4, 1],
            [240, 24],
        )  # fmt: skip


R = 64  # query rows of a head in a tile, and keys a step: a 128-key block is walked as two 64-key sub-blocks
# row_stats' TMA boxes land unswizzled: the consumers read them as vectors, not as a product's operand
ROW_STATS_LAYOUT = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=2) if HAVE_GLUON else None


def supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, B: int) -> bool:
    """Whether ``forward`` serves this call (else the Triton forward does): a Hopper GPU, D = 128, B = 64 or 128, a
    GQA group of 4, 8, 12, ... query heads, bf16/fp16, TMA-eligible strides."""
    if not (HAVE_GLUON and q.is_cuda and B in (R, 2 * R) and q.shape[-1] == 128):
        return False
    if torch.cuda.get_device_capability(q.device)[0] != 9 or q.shape[1] % (4 * k.shape[1]):
        return False
    if q.dtype not in (torch.bfloat16, torch.float16) or k.dtype != q.dtype or v.dtype != q.dtype:
        return False
    return all(_tma_ok(x) for x in (q, k, v))


def backward_supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, do: torch.Tensor, B: int) -> bool:
    """Whether ``dq_pass`` and ``dkdv_pass`` serve this backward: ``supported``, and dO in q's dtype by TMA."""
    return supported(q, k, v, B) and _tma_ok(do) and do.dtype == q.dtype


def _tma_ok(x: torch.Tensor) -> bool:
    return (
        x.stride(-1) == 1 and x.data_ptr() % 16 == 0 and all(st * x.element_size() % 16 == 0 for st in x.stride()[:-1])
    )


def _desc(x: torch.Tensor, box: list[int]):
    layout = gl.NVMMASharedLayout.get_default_for(box, gl.bfloat16 if x.dtype == torch.bfloat16 else gl.float16)
    return GluonDescriptor.from_tensor(x, box, layout)


def forward(q, k, v, indices, cnt, n_lo, block_bias, doc_ids, out, lse, B: int, qk_scale: float, stages: int = 2,
            pingpong: bool = False, heads: int = 2, keys: int = R, overlap: bool = False) -> None:  # fmt: skip
    """Fill out [Bt, Hq, T, D] and lse [Bt, Hq, T] (natural log) like ``triton._fwd_kernel``; qk_scale in log2 units.
    Call only where ``supported``; cnt / n_lo are ``triton._row_counts(indices)``. ``heads``: query heads of R rows
    per consumer warpgroup (2: one K/V load serves 4 heads; 1: 2), ``keys``: keys a step (R, or B with one head: an
    S tile of 128 x 128 beside the 128 x 128 accumulator would not fit the registers)."""
    if heads not in (1, 2) or keys not in (R, B) or (heads == 2 and (keys > R or overlap)):
        raise ValueError(f"the Gluon forward takes GL_HEADS 1 or 2 and GL_KEYS {R} or the block size, 2 heads with "
                         f"{R} keys and no GL_OVERLAP only; got GL_HEADS={heads}, GL_KEYS={keys}, GL_OVERLAP={overlap} "
                         "(CONFIG_OVERRIDE['fwd'])")  # fmt: skip
    Bt, Hq, T, D = q.shape
    Hkv, nb, S = k.shape[1], indices.shape[2], indices.shape[3]
    G = Hq // Hkv
    q_desc = _desc(q, [1, heads, R, D])
    k_desc = _desc(k, [1, 1, keys, D])
    v_desc = _desc(v, [1, 1, keys, D])
    bias = block_bias if block_bias is not None else lse  # never read without HAS_BIAS
    # 4 default warps + 4 + 1 worker warps = 12 warps (a warpgroup each): 168 registers a thread at launch, which
    # setmaxnreg hands out as 240 to each consumer warpgroup and 24 to the load warp's.
    _gl_fwd_kernel[(nb * (B // R) * (G // (2 * heads)), Bt * Hkv)](
        q_desc, k_desc, v_desc, out, lse, indices, cnt, n_lo, bias, doc_ids if doc_ids is not None else cnt,
        out.stride(0), out.stride(1), out.stride(2), T, nb, S, Hkv, qk_scale, G=G, B=B, R=R, HPC=heads, KN=keys, D=D,
        STAGES=stages, HAS_BIAS=block_bias is not None, HAS_DOC=doc_ids is not None, PINGPONG=pingpong,
        OVERLAP=overlap, num_warps=4, maxnreg=168,
    )  # fmt: skip


def dq_pass(q, k, v, do, dq, lse, delta, indices, cnt, n_lo, block_bias, dbias_part, doc_ids, B: int, qk_scale: float,
            sm_scale: float, stages: int = 2, keys: int = R, overlap: bool = False, out=None, dlse=None,
            st=None) -> bool:  # fmt: skip
    """The dQ pass of ``triton._backward`` (dq [Bt, Hq, T, D] in q's dtype, or None; dbias_part
    [dq_partials(G, B), Bt, Hkv, nb, S] fp32 partials, one per query head of the group and 64 rows of the block, or
    None): False, doing nothing, where it does not apply (then the Triton pass runs). Two consumer warpgroups of 64
    rows (one query head each) per program: 128 rows, so a program per 2 query heads of 64 rows of a block (the
    128-row consumers of the forward would need ~290 registers a thread here).

    With ``st`` (``row_stats_like(lse)``, written here) the pass takes delta = rowsum(dO * out) - dlse (dlse
    [Bt, Hq, T] fp32 or None) from the dO and out tiles it loads (``delta`` unused) and fills ``st`` for the dK/dV
    pass: no ``triton._delta_kernel`` (16 GiB read at 1M tokens) and no ``row_stats``."""
    if keys > R and overlap:  # dS(n-1), S(n), dP(n) and dq: 64 + 64 + 64 + 32 fp32 registers a thread, and spills
        raise ValueError(f"the Gluon dQ pass overlaps {R}-key steps only; got GL_KEYS={keys} with GL_OVERLAP=1 "
                         "(CONFIG_OVERRIDE['dq'])")  # fmt: skip
    if keys > R and stages > 2:  # q, dO 64 KB and K, V 64 KB a stage: 3 stages need 256 of the 227 KB of shared memory
        raise ValueError(f"the Gluon dQ pass takes GL_KEYS={keys} with STAGES <= 2 only; got STAGES={stages} "
                         "(CONFIG_OVERRIDE['dq'])")  # fmt: skip
    fuse = st is not None
    if not backward_supported(q, k, v, do, B) or keys not in (R, B) or (fuse and not _tma_ok(out)):
        return False
    Bt, Hq, T, D = q.shape
    Hkv, nb, S = k.shape[1], indices.shape[2], indices.shape[3]
    G = Hq // Hkv
    box, kv_box = [1, 1, R, D], [1, 1, keys, D]
    q_desc, do_desc, k_desc, v_desc = _desc(q, box), _desc(do, box), _desc(k, kv_box), _desc(v, kv_box)
    o_desc = _desc(out, box) if fuse else q_desc  # never read without FUSE_DELTA
    dq_arg = dq if dq is not None else q  # never written without WANT_DQ
    _gl_dq_kernel[(nb * (B // R) * (G // 2), Bt * Hkv)](
        q_desc, do_desc, o_desc, k_desc, v_desc, dq_arg, lse, delta if delta is not None else lse,
        dlse if dlse is not None else lse, st if fuse else lse, indices, cnt, n_lo,
        block_bias if block_bias is not None else lse, dbias_part if dbias_part is not None else lse,
        doc_ids if doc_ids is not None else cnt, dq_arg.stride(0), dq_arg.stride(1), dq_arg.stride(2),
        T, st.shape[-1] if fuse else T, nb, S, Hkv, Bt * Hkv * nb, qk_scale, sm_scale,
        G=G, B=B, R=R, KN=keys, D=D, HPC=1, STAGES=stages, S_P2=triton.next_power_of_2(S),
        HAS_BIAS=block_bias is not None,
        WANT_DBIAS=dbias_part is not None, WANT_DQ=dq is not None, HAS_DOC=doc_ids is not None, OVERLAP=overlap,
        FUSE_DELTA=fuse, HAS_DLSE=dlse is not None, num_warps=4, maxnreg=168,
    )  # fmt: skip
    return True


def dq_partials(G: int, B: int) -> int:
    """Bias-gradient partials of ``dq_pass``: one per query head of the group and R rows of a block."""
    return G * (B // R)


def row_stats_like(lse: torch.Tensor) -> torch.Tensor:
    """An unfilled ``row_stats`` buffer for lse [Bt, Hq, T]: [Bt * Hq * 2, Tp] fp32 (``dq_pass`` fills it)."""
    Bt, Hq, T = lse.shape
    return torch.empty(Bt * Hq * 2, -(-T // R) * R, device=lse.device, dtype=torch.float32)


def row_stats(lse: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """[Bt * Hq * 2, Tp] fp32, Tp = T rounded up to R: for each (batch, query head) its rows' lse in log2 units
    (+inf where lse is -inf, an empty row, or past T: p = 0 there), then their delta (0 past T). The dK/dV pass's load
    warp brings a slice's two rows of it by one TMA box with q and dO. lse, delta: [Bt, Hq, T] fp32. (Where the Gluon
    dQ pass runs first it writes the same rows itself: ``dq_pass(st=...)``.)"""
    Bt, Hq, T = lse.shape
    st = row_stats_like(lse).view(Bt, Hq, 2, -1)
    torch.mul(lse, 1.4426950408889634, out=st[:, :, 0, :T])
    st[:, :, 0, :T].masked_fill_(lse == float("-inf"), float("inf"))
    st[:, :, 0, T:] = float("inf")
    st[:, :, 1, :T] = delta
    st[:, :, 1, T:] = 0.0
    return st.view(Bt * Hq * 2, st.shape[-1])


def dkdv_pass(q, k, v, do, dk, dv, dkp, dvp, lse, delta, indices, items, csr, block_bias, doc_ids, B: int,
              qk_scale: float, sm_scale: float, stages: int = 4, st=None) -> bool:  # fmt: skip
    """The dK/dV pass of ``triton._backward`` over its work items (``triton._kv_work``: a key block's CSR piece each;
    dk, dv written where a program owns its block, fp32 partials dkp / dvp otherwise, for ``triton._reduce_kernel``):
    False, doing nothing, where it does not apply. A load warp streams the (64 rows of a listed query block, head)
    slices' q and dO by TMA into ``stages`` buffers. B = 64: two consumer warpgroups take alternate slices into their
    own dk, dv (64 keys x 128, fp32) and add them up at the end (each waits only on its own buffers, so 4 give each
    two; an odd count would hand a consumer the other's, and is refused). B = 128: each consumer holds 64 of the
    keys and takes every slice, so one q / dO load serves 128 keys (half the bytes a key of B = 64). ``st``: the
    rows' ``row_stats`` where the dQ pass wrote them (then ``delta`` is unused), else made here."""
    if not backward_supported(q, k, v, do, B) or (B == R and stages % 2):
        return False
    Bt, Hq, T, D = q.shape
    Hkv, nb, S = k.shape[1], indices.shape[2], indices.shape[3]
    box = [1, 1, R, D]
    q_desc, do_desc, k_desc, v_desc = _desc(q, box), _desc(do, box), _desc(k, box), _desc(v, box)
    st = row_stats(lse, delta) if st is None else st
    st_desc = GluonDescriptor.from_tensor(st, [2, R], ROW_STATS_LAYOUT)
    _gl_dkdv_kernel[(items.shape[0],)](
        q_desc, do_desc, k_desc, v_desc, st_desc, dk, dv, dkp, dvp, items, csr,
        block_bias if block_bias is not None else lse, doc_ids if doc_ids is not None else csr,
        dk.stride(0), dk.stride(1), dk.stride(2), dv.stride(0), dv.stride(1), dv.stride(2), T, nb, S, Hkv,
        qk_scale, sm_scale, G=Hq // Hkv, B=B, R=R, D=D, STAGES=stages, HAS_BIAS=block_bias is not None,
        HAS_DOC=doc_ids is not None, num_warps=4, maxnreg=168,
    )  # fmt: skip
    return True
