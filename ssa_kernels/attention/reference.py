"""Block-sparse attention of SSA in plain PyTorch: the oracle for the Triton kernels and the CPU path.

Each (query block, kv head) attends to a short list of key blocks chosen by the selector (sink +
local window + routed blocks, ``ssa_kernels/config.py``). This file computes exact softmax attention
over those blocks, written for clarity and for linear memory rather than speed. The Triton kernels
(next issue) are tested against it, and it is what runs where Triton does not (CPU, debugging).

Conventions
-----------
- ``q [Bt, Hq, T, D]``, ``k``/``v`` ``[Bt, Hkv, T, D]`` with ``Hq = G * Hkv``; query heads
  ``h*G .. h*G+G-1`` use kv head ``h`` (the ``repeat_interleave`` order of HF's ``repeat_kv``).
- ``indices [Bt, Hkv, nb, S]`` int64, ``nb = ceil(T / block_size)``: for query block ``i`` the key
  blocks to attend, without duplicates, padded at the end with ``-1``. Shared by the G query heads.
- Query ``t`` sees key ``s`` iff the block of ``s`` is listed for the block of ``t``, ``s <= t``
  and (with ``doc_ids``) ``doc_ids[t] == doc_ids[s]``. The causal test is applied to every gathered
  key: it only removes anything on the diagonal block (or on future blocks listed by mistake).
- Padding (``-1``) entries contribute nothing: the reference gathers a placeholder block for them
  and masks all of its scores, so neither the output nor any gradient sees it.
- A query with no visible key (its own block not listed) gets ``out = 0`` and ``lse = -inf``, and
  zero gradients; never NaN. In SSA the diagonal block is always listed, so this does not happen.

Memory
------
Linear in T. Query blocks are processed ``chunk_blocks`` at a time; a chunk gathers its selected
K/V blocks (``[Bt, Hkv, c, S*B, D]``, each block once per kv head and shared by the G query heads)
and makes scores ``[Bt, Hkv, c, G*B, S*B]``. The backward (a custom autograd.Function) saves only
q, k, v, indices, doc_ids, out and lse and recomputes each chunk's probabilities from lse, flash-attention
style: ``dS = P * (dP - delta)``, ``delta = rowsum(dO * O) - dlse``; dK/dV of the gathered blocks are
summed into per-block buffers with ``index_add_``. Nothing of T*T, T*nb or nb*nb elements is made.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ssa_kernels.attention.routing import add_routing_grads

__all__ = ["AUTO_CHUNK_BYTES", "auto_chunk_blocks", "check_inputs", "sparse_attention"]

AUTO_CHUNK_BYTES = 64 << 20  # gathered K/V + score-sized temporaries of one chunk, fp32


def auto_chunk_blocks(batch: int, kv_heads: int, groups: int, nb: int, s: int, block_size: int, dim: int) -> int:
    """Query blocks per chunk so that one chunk's gathered K/V (2 x S*B*D) and the three
    score-sized fp32 temporaries of the backward (P, dP, dS: 3 x G*B x S*B) fit AUTO_CHUNK_BYTES.
    At least one block, even when a single block needs more."""
    per_block = 4 * batch * kv_heads * s * block_size * (2 * dim + 3 * groups * block_size)
    return max(1, min(nb, AUTO_CHUNK_BYTES // max(1, per_block)))


def _rows(x: torch.Tensor, b0: int, b1: int, block_size: int) -> torch.Tensor:
    """Tokens of query blocks [b0, b1) along dim -2 of x [..., T, D], zero-padded past T, in fp32."""
    t0, t1 = b0 * block_size, b1 * block_size
    part = x[..., t0 : min(t1, x.shape[-2]), :].float()  # [..., <= (b1-b0)*B, D]
    return F.pad(part, (0, 0, 0, t1 - t0 - part.shape[-2])).contiguous()  # [..., (b1-b0)*B, D]


class _Chunk:
    """Everything one chunk of query blocks [b0, b1) needs, shared by forward and backward.

    Shapes use c = b1 - b0 query blocks, S listed blocks, B = block_size, G = Hq // Hkv.
    """

    def __init__(self, indices, doc_blocks, b0, b1, block_size, T, G):
        Bt, Hkv, nb, S = indices.shape
        B, c = block_size, b1 - b0
        dev = indices.device
        idx = indices[:, :, b0:b1]  # [Bt, Hkv, c, S]
        valid = idx >= 0  # [Bt, Hkv, c, S]
        safe = idx.clamp_min(0)  # padding reads block 0 as a placeholder; all its scores are masked
        # Row of each gathered block in the [Bt*Hkv*nb, B, D] view of padded K/V.
        base = torch.arange(Bt * Hkv, device=dev).view(Bt, Hkv, 1, 1) * nb  # [Bt, Hkv, 1, 1]
        self.flat = (base + safe).reshape(-1)  # [Bt*Hkv*c*S]
        self.shape = (Bt, Hkv, c, S, B, G)

        offs = torch.arange(B, device=dev)
        kpos = (safe[..., None] * B + offs).reshape(Bt, Hkv, c, S * B)  # [Bt, Hkv, c, S*B]
        qpos = ((b0 + torch.arange(c, device=dev))[:, None] * B + offs).view(1, 1, c, 1, B, 1)  # [1,1,c,1,B,1]
        keep = valid[..., None].expand(Bt, Hkv, c, S, B).reshape(Bt, Hkv, c, 1, 1, S * B)  # [Bt,Hkv,c,1,1,S*B]
        # [Bt, Hkv, c, 1, B, S*B]: broadcast over the G query heads of the group
        allowed = keep & (kpos.view(Bt, Hkv, c, 1, 1, S * B) <= qpos) & (qpos < T)
        if doc_blocks is not None:
            # doc_blocks [Bt, nb*B]; key documents gathered per kv head, query documents per row
            doc_k = doc_blocks.gather(1, kpos.reshape(Bt, Hkv * c * S * B)).view(Bt, Hkv, c, 1, 1, S * B)
            doc_q = doc_blocks[:, b0 * B : b1 * B].reshape(Bt, 1, c, 1, B, 1)  # [Bt, 1, c, 1, B, 1]
            allowed = allowed & (doc_k == doc_q)
        self.allowed = allowed

    def gather(self, x_blocks: torch.Tensor) -> torch.Tensor:
        """x_blocks [Bt*Hkv*nb, B, D] -> the listed blocks [Bt, Hkv, c, S*B, D]."""
        Bt, Hkv, c, S, B, _ = self.shape
        return x_blocks.index_select(0, self.flat).view(Bt, Hkv, c, S * B, x_blocks.shape[-1])

    def scatter_add(self, acc_blocks: torch.Tensor, grad: torch.Tensor) -> None:
        """Sum grad [Bt, Hkv, c, S*B, D] of the gathered blocks into acc_blocks [Bt*Hkv*nb, B, D].
        Padding entries add exact zeros to block 0 (their probabilities are 0)."""
        Bt, Hkv, c, S, B, _ = self.shape
        acc_blocks.index_add_(0, self.flat, grad.reshape(Bt * Hkv * c * S, B, grad.shape[-1]))

    def probs(self, qc, kg, scale, bias=None, lse=None):
        """qc [Bt, Hkv, c, G*B, D], kg [Bt, Hkv, c, S*B, D], bias [Bt, Hkv, c, S] or None -> (P, lse),
        P [Bt, Hkv, c, G*B, S*B] and lse [Bt, Hkv, c, G, B]; lse is recomputed unless given (backward)."""
        Bt, Hkv, c, S, B, G = self.shape
        s = torch.matmul(qc, kg.transpose(-1, -2)).mul_(scale)  # [Bt, Hkv, c, G*B, S*B]
        if bias is not None:  # one logit offset per listed block, for all its keys and all G*B rows
            s = s.view(Bt, Hkv, c, G * B, S, B).add_(bias[:, :, :, None, :, None].float())
        s = s.view(Bt, Hkv, c, G, B, S * B).masked_fill_(~self.allowed, -math.inf)  # [Bt, Hkv, c, G, B, S*B]
        if lse is None:
            lse = torch.logsumexp(s, dim=-1)  # [Bt, Hkv, c, G, B]; -inf where no key is visible
        # Rows without a visible key: subtract 0 instead of -inf, so exp(-inf - 0) = 0, not NaN.
        shift = torch.where(torch.isfinite(lse), lse, 0.0)  # [Bt, Hkv, c, G, B]
        p = s.sub_(shift[..., None]).exp_()  # [Bt, Hkv, c, G, B, S*B]
        return p.view(Bt, Hkv, c, G * B, S * B), lse


def _heads_to_groups(x: torch.Tensor, Hkv: int, c: int, B: int) -> torch.Tensor:
    """[Bt, Hq, c*B, D] -> [Bt, Hkv, c, G*B, D]: the G query heads of kv head h become rows of one
    tile that shares h's gathered blocks."""
    Bt, Hq, _, D = x.shape
    G = Hq // Hkv
    x = x.view(Bt, Hkv, G, c, B, D)  # [Bt, Hkv, G, c, B, D]
    return x.permute(0, 1, 3, 2, 4, 5).reshape(Bt, Hkv, c, G * B, D)  # [Bt, Hkv, c, G*B, D]


def _groups_to_heads(x: torch.Tensor, G: int) -> torch.Tensor:
    """[Bt, Hkv, c, G*B, ...] -> [Bt, Hq, c*B, ...] (inverse of _heads_to_groups)."""
    Bt, Hkv, c, GB = x.shape[:4]
    rest = x.shape[4:]
    x = x.view(Bt, Hkv, c, G, GB // G, *rest)  # [Bt, Hkv, c, G, B, ...]
    return x.transpose(2, 3).reshape(Bt, Hkv * G, c * (GB // G), *rest)  # [Bt, Hq, c*B, ...]


def _kv_blocks(x: torch.Tensor, nb: int, B: int) -> torch.Tensor:
    """[Bt, Hkv, T, D] -> fp32 [Bt*Hkv*nb, B, D], zero-padded past T (rows that gather indexes)."""
    Bt, Hkv, T, D = x.shape
    x = F.pad(x.float(), (0, 0, 0, nb * B - T))  # [Bt, Hkv, nb*B, D]
    return x.reshape(Bt * Hkv * nb, B, D)  # [Bt*Hkv*nb, B, D]


def _doc_blocks(doc_ids: torch.Tensor | None, nb: int, B: int) -> torch.Tensor | None:
    """[Bt, T] -> [Bt, nb*B], padded with -1 (padded positions are masked by the causal test anyway)."""
    if doc_ids is None:
        return None
    return F.pad(doc_ids, (0, nb * B - doc_ids.shape[1]), value=-1)  # [Bt, nb*B]


class _SparseAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, indices, doc_ids, block_bias, routed_mask, q_mean, k_mean, block_size: int,
                scale: float, chunk: int):  # fmt: skip
        Bt, Hq, T, D = q.shape
        Hkv, nb = k.shape[1], indices.shape[2]
        G, B = Hq // Hkv, block_size
        kb, vb = _kv_blocks(k, nb, B), _kv_blocks(v, nb, B)  # [Bt*Hkv*nb, B, D]
        docs = _doc_blocks(doc_ids, nb, B)
        # NaN poison: an element no chunk writes fails the tests instead of passing as garbage.
        out = torch.full_like(q, math.nan)  # [Bt, Hq, T, D]
        lse = torch.full((Bt, Hq, T), math.nan, dtype=torch.float32, device=q.device)  # [Bt, Hq, T]
        for b0 in range(0, nb, chunk):
            b1 = min(nb, b0 + chunk)
            t0, t1 = b0 * B, min(b1 * B, T)
            ck = _Chunk(indices, docs, b0, b1, B, T, G)
            qc = _heads_to_groups(_rows(q, b0, b1, B), Hkv, b1 - b0, B)  # [Bt, Hkv, c, G*B, D]
            bias_c = block_bias[:, :, b0:b1] if block_bias is not None else None  # [Bt, Hkv, c, S]
            p, lse_c = ck.probs(qc, ck.gather(kb), scale, bias_c)  # [Bt, Hkv, c, G*B, S*B], [Bt, Hkv, c, G, B]
            o = torch.matmul(p, ck.gather(vb))  # [Bt, Hkv, c, G*B, D]
            out[:, :, t0:t1] = _groups_to_heads(o, G)[:, :, : t1 - t0]
            lse_c = lse_c.reshape(Bt, Hkv, b1 - b0, G * B)  # [Bt, Hkv, c, G*B]
            lse[:, :, t0:t1] = _groups_to_heads(lse_c, G)[:, :, : t1 - t0]
        ctx.save_for_backward(q, k, v, indices, doc_ids, block_bias, routed_mask, q_mean, k_mean, out, lse)
        ctx.block_size, ctx.scale, ctx.chunk = block_size, scale, chunk
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        q, k, v, indices, doc_ids, block_bias, routed_mask, q_mean, k_mean, out, lse = ctx.saved_tensors
        B, scale, chunk = ctx.block_size, ctx.scale, ctx.chunk
        Bt, Hq, T, D = q.shape
        Hkv, nb = k.shape[1], indices.shape[2]
        G = Hq // Hkv
        want_q, want_k, want_v = ctx.needs_input_grad[:3]
        want_route = routed_mask is not None and (want_q or want_k)
        want_bias = ctx.needs_input_grad[5] or want_route
        dbias = torch.full(indices.shape, math.nan, dtype=torch.float32, device=q.device) if want_bias else None
        if grad_out is None:  # only lse was used
            grad_out = torch.zeros_like(out)
        kb, vb = _kv_blocks(k, nb, B), _kv_blocks(v, nb, B)  # [Bt*Hkv*nb, B, D]
        docs = _doc_blocks(doc_ids, nb, B)
        dq = torch.full_like(q, math.nan) if want_q else None  # [Bt, Hq, T, D], NaN poison as in forward
        dkb = torch.zeros_like(kb) if want_k else None  # [Bt*Hkv*nb, B, D] fp32 accumulators
        dvb = torch.zeros_like(vb) if want_v else None
        for b0 in range(0, nb, chunk):
            b1 = min(nb, b0 + chunk)
            c, t0, t1 = b1 - b0, b0 * B, min(b1 * B, T)
            ck = _Chunk(indices, docs, b0, b1, B, T, G)
            qc = _heads_to_groups(_rows(q, b0, b1, B), Hkv, c, B)  # [Bt, Hkv, c, G*B, D]
            do_c = _heads_to_groups(_rows(grad_out, b0, b1, B), Hkv, c, B)  # [Bt, Hkv, c, G*B, D]
            oc = _heads_to_groups(_rows(out, b0, b1, B), Hkv, c, B)  # [Bt, Hkv, c, G*B, D]
            lse_c = _heads_to_groups(_rows(lse[..., None], b0, b1, B), Hkv, c, B)  # [Bt, Hkv, c, G*B, 1]
            # Query rows past T are masked (P = 0) and have dO = 0: they add nothing to dQ, dK, dV.
            delta = (do_c * oc).sum(-1, keepdim=True)  # [Bt, Hkv, c, G*B, 1]
            if grad_lse is not None:  # d lse / d s = P, so dlse folds into delta
                delta -= _heads_to_groups(_rows(grad_lse[..., None], b0, b1, B), Hkv, c, B)
            kg, vg = ck.gather(kb), ck.gather(vb)  # [Bt, Hkv, c, S*B, D]
            bias_c = block_bias[:, :, b0:b1] if block_bias is not None else None  # [Bt, Hkv, c, S]
            p, _ = ck.probs(qc, kg, scale, bias_c, lse_c.view(Bt, Hkv, c, G, B))  # [Bt, Hkv, c, G*B, S*B]
            if want_v:
                ck.scatter_add(dvb, torch.matmul(p.transpose(-1, -2), do_c))  # sums the G heads
            ds = torch.matmul(do_c, vg.transpose(-1, -2)).sub_(delta).mul_(p)  # [Bt, Hkv, c, G*B, S*B]
            del p
            if want_bias:  # d(block logit offset) = sum of dS over its tile: G*B rows x B keys
                S = ds.shape[-1] // B
                dbias[:, :, b0:b1] = ds.view(Bt, Hkv, c, G * B, S, B).sum(dim=(3, 5))  # [Bt, Hkv, c, S]
            if want_q:
                dq_c = torch.matmul(ds, kg).mul_(scale)  # [Bt, Hkv, c, G*B, D]
                dq[:, :, t0:t1] = _groups_to_heads(dq_c, G)[:, :, : t1 - t0]
            if want_k:
                ck.scatter_add(dkb, torch.matmul(ds.transpose(-1, -2), qc).mul_(scale))
        dk = dkb.view(Bt, Hkv, nb * B, D)[:, :, :T].to(k.dtype) if want_k else None  # [Bt, Hkv, T, D]
        dv = dvb.view(Bt, Hkv, nb * B, D)[:, :, :T].to(v.dtype) if want_v else None
        if want_route:
            means = (q_mean, k_mean) if q_mean is not None else None
            add_routing_grads(dq, dk, q, k, indices, dbias, routed_mask, B, means=means)
        dbias = dbias.to(block_bias.dtype) if ctx.needs_input_grad[5] else None
        return dq, dk, dv, None, None, dbias, None, None, None, None, None, None


def check_inputs(
    q, k, v, indices, block_size: int, doc_ids=None, block_bias=None, routed_mask=None, route_means=None
) -> None:
    """The shapes and dtypes every sparse-attention implementation needs (this reference and the Triton
    kernels): raises ValueError naming the argument."""
    Bt, Hq, T, D = q.shape
    Bk, Hkv, Tk, Dk = k.shape
    nb = -(-T // block_size)
    if k.shape != v.shape or (Bk, Tk, Dk) != (Bt, T, D) or Hkv < 1 or Hq % Hkv:
        raise ValueError(
            f"q {tuple(q.shape)} needs k = v = [Bt, Hkv, T, D] with Hq % Hkv == 0; got k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if indices.dim() != 4 or indices.shape[:3] != (Bt, Hkv, nb) or indices.dtype != torch.int64:
        raise ValueError(
            f"indices must be int64 [Bt, Hkv, nb, S] = [{Bt}, {Hkv}, {nb}, S]; got {indices.dtype} {tuple(indices.shape)}"
        )
    if doc_ids is not None and (doc_ids.shape != (Bt, T) or doc_ids.dtype != torch.int64):
        raise ValueError(f"doc_ids must be int64 [Bt, T] = [{Bt}, {T}]; got {doc_ids.dtype} {tuple(doc_ids.shape)}")
    if block_bias is not None and block_bias.shape != indices.shape:
        raise ValueError(
            f"block_bias must have the shape of indices {tuple(indices.shape)}; got {tuple(block_bias.shape)}"
        )
    if routed_mask is not None and (routed_mask.shape != indices.shape or routed_mask.dtype != torch.bool):
        raise ValueError(
            f"routed_mask must be bool with the shape of indices {tuple(indices.shape)}; got {routed_mask.dtype} "
            f"{tuple(routed_mask.shape)}"
        )
    if route_means is not None:
        want = (Bt, Hkv, nb, D)
        if routed_mask is None or len(route_means) != 2 or any(tuple(m.shape) != want for m in route_means):
            got = [tuple(m.shape) for m in route_means]
            raise ValueError(
                f"route_means must be two [Bt, Hkv, nb, D] = {list(want)} tensors beside routed_mask; got {got}"
            )


def sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    indices: torch.Tensor,
    block_size: int,
    doc_ids: torch.Tensor | None = None,
    scale: float | None = None,
    chunk_blocks: int = 0,
    block_bias: torch.Tensor | None = None,
    routed_mask: torch.Tensor | None = None,
    route_means: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact softmax attention of each query over the key blocks listed for its block.

    q [Bt, Hq, T, D]; k, v [Bt, Hkv, T, D] (Hq = G * Hkv); indices [Bt, Hkv, ceil(T/block_size), S]
    int64, -1-padded; doc_ids [Bt, T] int64 nondecreasing or None; scale default 1/sqrt(D);
    chunk_blocks query blocks per chunk (0: about AUTO_CHUNK_BYTES of temporaries); block_bias
    [Bt, Hkv, nb, S] or None: added to the logits of every key of listed block s, for every query of
    the block and every head of the group (differentiable: its gradient is the sum of dS over the tile;
    SSA's routing uses it, ``ssa_kernels/__init__.py``); routed_mask [Bt, Hkv, nb, S] bool or None: the
    slots routed by the attention's own q and k, whose straight-through routing gradient the backward adds
    to dq and dk in place (``routing.py``; the forward is unchanged); route_means (q̄, k̄), each
    [Bt, Hkv, nb, D], or None: the block means that scored those slots (``Selection.means``), reused by that
    gradient (None: it computes them from q and k).

    Returns out [Bt, Hq, T, D] in q's dtype and lse [Bt, Hq, T] fp32 (natural log); both carry
    gradients to q, k, v. Queries with no visible key get out 0 and lse -inf. See the module docstring.
    """
    Bt, Hq, T, D = q.shape
    Hkv, nb = k.shape[1], indices.shape[2]
    check_inputs(q, k, v, indices, block_size, doc_ids, block_bias, routed_mask, route_means)
    if scale is None:
        scale = D**-0.5
    if chunk_blocks <= 0:
        chunk_blocks = auto_chunk_blocks(Bt, Hkv, Hq // Hkv, nb, indices.shape[3], block_size, D)
    q_mean, k_mean = route_means if route_means is not None else (None, None)
    return _SparseAttention.apply(
        q, k, v, indices, doc_ids, block_bias, routed_mask, q_mean, k_mean, block_size, float(scale), chunk_blocks
    )
