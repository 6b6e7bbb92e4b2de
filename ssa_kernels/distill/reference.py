"""PyTorch reference of the distillation target (the oracle and the CPU path): the dense causal attention mass of
sampled query blocks on every key block, from materialised probabilities in chunks. ``triton.py`` beside it
computes the same without materialising them."""

from __future__ import annotations

import math

import torch
from torch import Tensor

CHUNK_ELEMENTS = 1 << 26  # fp32 probabilities held at once (256 MiB)


def doc_starts(doc_ids: Tensor | None, bt: int, seq_len: int, device: torch.device) -> Tensor:
    """First position of each token's document, [Bt, T] int64 (documents are nondecreasing id runs)."""
    if doc_ids is None:
        return torch.zeros(bt, seq_len, dtype=torch.long, device=device)
    doc_ids = doc_ids.to(device=device, dtype=torch.long).contiguous()
    return torch.searchsorted(doc_ids, doc_ids)


@torch.no_grad()
def dense_block_mass(
    q: Tensor,
    k: Tensor,
    query_blocks: Tensor,
    block_size: int,
    doc_ids: Tensor | None = None,
    scale: float | None = None,
    max_elements: int = CHUNK_ELEMENTS,
    matmul_dtype: torch.dtype | None = None,
    far: tuple[Tensor, Tensor] | None = None,
    local_blocks: int = 1,
    rows: str = "mean",
) -> Tensor:
    """Dense causal attention mass of sampled query blocks on every key block.

    q [Bt, Hq, T, D] (post-RoPE), k [Bt, Hkv, T, D], query_blocks [nq] int64 ->
    mass [Bt, Hkv, nq, nb] fp32: per query block, the dense probabilities (softmax over the keys each
    row may see: causal, in its document) summed per key block and averaged over the block's real rows
    and the G query heads of kv head h. Each row of the result sums to 1. O(nq x B x T) per head, as
    many query blocks at a time as fit in ``max_elements`` fp32 probabilities (at least one). The q . k
    matmul runs in ``matmul_dtype`` (default q's: bf16 tensor cores under autocast), the softmax in fp32.

    ``far`` (q_far [Bt, Hq, T, D], k_far [Bt, Hkv, T, D]): the logits of keys in blocks j <= i - local_blocks
    (query block i: the far blocks, outside the local window) are q_far . k_far, the others q . k, in one
    softmax: the mass of the attention SSA computes under ``far_distance`` (``_attend_near_far``).

    ``rows`` (``SSAConfig.distill_rows``): "mean" as above; "max": per key block the largest mass any one real row
    (of any of the G heads) puts on it, so rows no longer sum to 1."""
    bt, hq, seq_len, d = q.shape
    hkv, B, dev = k.shape[1], block_size, q.device
    group, nb = hq // hkv, -(-seq_len // block_size)
    scale = d**-0.5 if scale is None else scale
    start = doc_starts(doc_ids, bt, seq_len, dev)  # (Bt, T)
    dtype = matmul_dtype or q.dtype
    kd = k.to(dtype)  # (Bt, Hkv, T, D)
    kfd = None if far is None else far[1].to(dtype)
    kpos = torch.arange(seq_len, device=dev)
    per_block = bt * hq * B * seq_len * (1 if far is None else 2)  # with far: two logit tensors at once
    chunk = max(1, max_elements // per_block)
    out = []
    for c in range(0, len(query_blocks), chunk):
        blocks = query_blocks[c : c + chunk]  # (nc,)
        qrows = (blocks[:, None] * B + torch.arange(B, device=dev)).flatten()  # (nc*B,) may run past T
        real = qrows < seq_len
        qrows = qrows.clamp_max(seq_len - 1)
        qg = q[:, :, qrows].to(dtype).reshape(bt, hkv, group * len(qrows), d)  # (Bt, Hkv, G*nc*B, D), row g*nc*B + r
        qpos = qrows.repeat(group)  # (G*nc*B,)
        # key s is visible to query t iff start(doc t) <= s <= t
        allowed = (kpos <= qpos[:, None]) & (kpos >= start[:, qpos, None])  # (Bt, G*nc*B, T)
        logits = (qg @ kd.transpose(-1, -2)).float() * scale  # (Bt, Hkv, G*nc*B, T)
        if far is not None:  # far keys: block(s) <= block(t) - local_blocks
            qf = far[0][:, :, qrows].to(dtype).reshape(bt, hkv, group * len(qrows), d)
            is_far = kpos // B <= (qpos // B - local_blocks)[:, None]  # (G*nc*B, T)
            logits = torch.where(is_far, (qf @ kfd.transpose(-1, -2)).float() * scale, logits)
        p = torch.softmax(logits.masked_fill_(~allowed[:, None], -math.inf), dim=-1)
        p = torch.nn.functional.pad(p, (0, nb * B - seq_len)).view(bt, hkv, group, len(blocks), B, nb, B)
        w = real.view(len(blocks), B).float()  # (nc, B): padding rows of a ragged last block weigh 0
        per_row = p.sum(-1) * w[:, :, None]  # (Bt, Hkv, G, nc, B, nb): mass per key block, real rows only
        if rows == "max":  # padding rows weigh 0 and masses are >= 0: the max over every row is over the real ones
            mass = per_row.amax(4).amax(2)  # (Bt, Hkv, nc, nb)
        else:
            mass = per_row.sum((2, 4)) / (group * w.sum(-1))[:, None]  # (Bt, Hkv, nc, nb)
        out.append(mass)
    return torch.cat(out, dim=2) if out else torch.zeros(bt, hkv, 0, nb, device=dev)
