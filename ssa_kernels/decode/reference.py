"""SSA decoding with a KV cache, in plain PyTorch: each new token selects key blocks through key
prefix sums that grow by O(D) per token, then attends exactly to the selected blocks.

Selection rules
---------------
*Training* (``ssa_attention`` / ``select_blocks``) selects once per query block, with the mean query of
the whole block (all its tokens, over the G query heads of a kv-head group). A token being decoded cannot
see the later queries of its block, so decoding uses the *causal per-token rule*: token t of block
i = t // B selects with the mean query of tokens i*B .. t (its block so far, over the G heads), and
otherwise exactly as ``select_blocks`` selects for the last query block of the prefix 0..t:

- routed range [lo_i, hi_i) as in ``routed_bounds``: after the sink blocks, before the local window, not
  before the first block of the document of block i's first token;
- the pyramid of the prefix's nb_t = i + 1 blocks (``_num_levels(nb_t)`` levels, the same beam widths), the
  same beam search (``selector.beam_search``, shared code), node scores read from fp64 prefix sums over
  blocks restricted to the routed range and divided by the nominal node size, ties to the smaller index;
- sinks ∪ routed ∪ local window (diagonal block included), then exact softmax attention of t over the keys
  <= t of those blocks that lie in t's document.

Where the rules coincide: for every t, the per-token rule gives at t what the training path gives at the
last token of the prefix 0..t (the last query block of that prefix is t's block so far: same query mean,
same pyramid). The training selection of block i depends on nothing after block i (each query block
searches the pyramid of its own prefix, ``selector.row_levels``, and node scores are divided by the
nominal node size), so on any sequence the two rules agree at the last token of every full block, and
at the last token of the sequence (``tests/test_ssa_decode.py``).

Functions
---------
- :func:`causal_rows_attention`: the full forward under the per-token rule (the oracle for decoding; fine
  to be slow: one beam search per token, vectorised over chunks of tokens, no T x T tensor).
- :class:`DecodeState`: per layer, fp64 prefix sums of key-block sums grown in place, plus the running key and
  query sums of the current block and the current document. ``from_prefill`` builds it from a prompt in O(T).
- :func:`ssa_decode_step`: one token; updates the state, selects, attends.

Cost of a decode step: O(D) to update the state (plus amortised growth of the prefix buffer), a beam search
scoring at most ``top_nodes + levels * beam * branching`` nodes at O(D) each from the prefix sums, and
attention over (sink + topk + local) * B keys gathered from the cache. No tensor of T x D (or T) elements is
read or made; the state holds Bt * Hkv * (nb + 1) * D fp64 numbers (1/B of the key cache's count).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers.models.llama.modeling_llama import rotate_half

from ssa_kernels.config import SSAConfig, resolve_backend
from ssa_kernels.selector.reference import (
    BlockBounds,
    _accumulate_dtype,
    _ascending,
    _check_inputs,
    _key_prefix,
    _num_blocks,
    _num_levels,
    beam_search,
    block_minmax,
    level_widths,
    routed_bounds,
    search_bounds,
)

__all__ = ["BeamTrace", "DecodeState", "causal_rows_attention", "ssa_decode_step"]

# Query tokens per chunk of causal_rows_attention: bounds the [Bt, Hkv, R, (S*B), D] gathered keys and the
# [Bt, Hkv, R, chunk, D] candidate gathers of the beam search.
_CHUNK_TOKENS = 256


def _query_means(query_sums: Tensor, n_tokens: Tensor, group: int, head_dim: int, dtype: torch.dtype) -> Tensor:
    """Scaled query summaries: fp64 sums [..., R, D] over n_tokens [R] tokens and ``group`` heads ->
    mean / sqrt(D) in ``dtype`` (as ``select_blocks`` folds the score scale into the summary)."""
    mean = query_sums / (n_tokens.to(torch.float64) * group).unsqueeze(-1)
    return (mean / math.sqrt(head_dim)).to(dtype)


def _route_rows(
    q_sum: Tensor,
    prefix: Tensor,
    lo: Tensor,
    hi: Tensor,
    blocks: Tensor,
    cfg: SSAConfig,
    target: Tensor | None = None,
    bounds: BlockBounds | None = None,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Routed blocks [Bt, Hkv, R, topk] (ascending, -1 padding last) of R query rows, row r the last
    token of a prefix ending in block ``blocks[r]``: the selector's beam search (shared code) over that
    prefix's pyramid. q_sum [Bt, Hkv, R, D] scaled query summaries; prefix [Bt, Hkv, n1, D] fp64 key
    prefix sums over blocks, exact below every row's ``hi``; lo [Bt or 1, R], hi [R] routed ranges.
    Also the search's ranks of ``target`` [R] (``beam_search``; None without a target) and each row's
    pyramid height [R]. ``bounds``: ``search_bounds`` of the prefix (node or leaf scores bound)."""
    bt, hkv, rows, _ = q_sum.shape
    routed = torch.full((bt, hkv, rows, cfg.topk_blocks), -1, dtype=torch.long, device=q_sum.device)
    levels = torch.tensor([_num_levels(int(b) + 1, cfg) for b in blocks.tolist()], device=q_sum.device)
    if cfg.topk_blocks == 0:
        return routed, None, levels
    n_blocks = int(blocks.max()) + 1  # nodes past the longest prefix are out of every row's range
    best, _, _, ranks = beam_search(q_sum, prefix[:, :, : n_blocks + 1], lo, hi, levels, cfg, target, bounds)
    routed[..., : best.shape[-1]] = best
    return routed, ranks, levels


def _union_rows(routed: Tensor, block: Tensor, cfg: SSAConfig) -> Tensor:
    """Sinks ∪ routed ∪ local window of rows in blocks ``block`` [R], ascending, -1 padding last:
    routed [Bt, Hkv, R, topk] -> [Bt, Hkv, R, S]. The selector's ``_union`` with row r in block block[r]
    instead of block r."""
    bt, hkv, rows, _ = routed.shape
    block = block.view(1, 1, rows, 1)
    local_start = block - (cfg.local_blocks - 1)  # may be negative for the first blocks
    local = local_start + torch.arange(cfg.local_blocks, device=routed.device)  # (1, 1, R, local_blocks)
    local = torch.where(local >= 0, local, -1)
    sinks = torch.arange(cfg.sink_blocks, device=routed.device).view(1, 1, 1, -1)
    sinks = torch.where(sinks < local_start, sinks, -1)  # (1, 1, R, sink_blocks): those outside the window
    parts = [sinks.expand(bt, hkv, rows, -1), routed, local.expand(bt, hkv, rows, -1)]
    return _ascending(torch.cat(parts, dim=-1))[0]  # (Bt, Hkv, R, S)


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding of one tensor as HF's Llama, Qwen2 and Mistral apply it (their shared ``rotate_half``;
    HF's ``apply_rotary_pos_emb`` takes q and k together and fixes the head axis)."""
    return x * cos + rotate_half(x) * sin


def rope_at(rotary, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
    """(cos, sin) [*positions.shape, D] in fp32 from an HF rotary-embedding module (its scaling included)."""
    cos, sin = rotary(x.float(), positions.reshape(1, -1))
    return cos.float().view(*positions.shape, -1), sin.float().view(*positions.shape, -1)


def _attend_rows(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    indices: Tensor,
    q_pos: Tensor,
    key_start: Tensor,
    block_size: int,
    scale: float,
    far: tuple[Tensor, object, int] | None = None,
) -> Tensor:
    """Exact softmax attention of query rows over their listed key blocks.

    q [Bt, Hq, R, D] at positions q_pos [R]; k, v [Bt, Hkv, T, D]; indices [Bt, Hkv, R, S] (-1 padded);
    key_start [Bt or 1, R]: first key of each row's document. Row r sees key s iff s's block is listed,
    key_start <= s <= q_pos[r]. Computed in fp32 (fp64 for fp64 input); returns [Bt, Hq, R, D] in q's dtype.
    Gathers only the listed blocks: [Bt, Hkv, R, S*B, D].

    ``far`` (``SSAConfig.far_distance`` > 0): (q_far [Bt, Hq, R, D], rotary, local_blocks) with q and the cache
    un-rotated. Keys of the local window's blocks are rotated here at their cache index and q at q_pos (only
    the distance matters), keys of the other listed blocks meet q_far as they are.
    """
    bt, hq, rows, d = q.shape
    hkv, seq_len = k.shape[1], k.shape[2]
    group = hq // hkv
    dtype = _accumulate_dtype(q)
    offs = torch.arange(block_size, device=q.device)
    kpos = (indices.unsqueeze(-1) * block_size + offs).flatten(-2)  # (Bt, Hkv, R, S*B)
    visible = (
        (indices >= 0).repeat_interleave(block_size, dim=-1)
        & (kpos <= q_pos.view(1, 1, rows, 1))
        & (kpos >= key_start.view(-1, 1, rows, 1))
    )  # (Bt, Hkv, R, S*B)
    flat = kpos.clamp(0, seq_len - 1).flatten(2).unsqueeze(-1).expand(-1, -1, -1, d)  # (Bt, Hkv, R*S*B, D)
    kg = k.gather(2, flat).view(bt, hkv, rows, -1, d).to(dtype)  # (Bt, Hkv, R, S*B, D)
    vg = v.gather(2, flat).view(bt, hkv, rows, -1, d).to(dtype)
    qg = q.view(bt, hkv, group, rows, d).transpose(2, 3).to(dtype)  # (Bt, Hkv, R, G, D): the group shares kg
    if far is None:
        s = torch.matmul(qg, kg.transpose(-1, -2)) * scale  # (Bt, Hkv, R, G, S*B)
    else:
        q_far, rotary, local_blocks = far
        far_key = (indices <= (q_pos // block_size).view(1, 1, rows, 1) - local_blocks).repeat_interleave(
            block_size, dim=-1
        )  # (Bt, Hkv, R, S*B)
        cos, sin = rope_at(rotary, q, kpos.clamp_min(0))  # (Bt, Hkv, R, S*B, D)
        near = torch.matmul(rotate(qg, *(t.to(dtype).view(1, 1, rows, 1, d) for t in rope_at(rotary, q, q_pos))),
                            rotate(kg, cos.to(dtype), sin.to(dtype)).transpose(-1, -2))  # fmt: skip
        qf = q_far.view(bt, hkv, group, rows, d).transpose(2, 3).to(dtype)
        s = torch.where(far_key.unsqueeze(-2), torch.matmul(qf, kg.transpose(-1, -2)), near) * scale
    s = s.masked_fill(~visible.unsqueeze(-2), -math.inf)  # the diagonal key t is always visible: no empty row
    o = torch.matmul(s.softmax(dim=-1), vg)  # (Bt, Hkv, R, G, D)
    return o.transpose(2, 3).reshape(bt, hq, rows, d).to(q.dtype)  # (Bt, Hq, R, D)


def causal_rows_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cfg: SSAConfig,
    doc_ids: Tensor | None = None,
    scale: float | None = None,
    route: tuple[Tensor, Tensor] | None = None,
    far: tuple[Tensor, object] | None = None,
) -> Tensor:
    """SSA over a whole sequence under the causal per-token rule (see the module docstring): what decoding
    the sequence token by token gives. q [Bt, Hq, T, D] (post-RoPE), k, v [Bt, Hkv, T, D], doc_ids [Bt, T]
    nondecreasing or None -> out [Bt, Hq, T, D].

    Autograd reaches q, k, v through the attention only (the selection is discrete; no routing gradient).
    Memory is linear in T: per chunk of tokens the gathered blocks and beam candidates. ``route``:
    (route_q [Bt, Hr, T, d], route_k [Bt, Hkv, T, d]) scored by the selector instead of q and k
    (a learned router's outputs; see ``ssa_kernels.ssa_attention``). ``far``: (q_far [Bt, Hq, T, D], HF rotary
    module) with q, k un-rotated, as in :func:`ssa_decode_step`.
    """
    _check_inputs(q, k, cfg, doc_ids)
    rq, rk = route if route is not None else (q, k)
    _check_inputs(rq, rk, cfg, doc_ids)
    if v.shape != k.shape:
        raise ValueError(f"v must have the shape of k {tuple(k.shape)}; got {tuple(v.shape)}")
    bt, hq, seq_len, d = q.shape
    hkv, block_size = k.shape[1], cfg.block_size
    scale = d**-0.5 if scale is None else scale
    nb = _num_blocks(seq_len, block_size)
    with torch.no_grad():
        rd, rgroup = rk.shape[-1], rq.shape[1] // hkv
        prefix = _key_prefix(rk.detach(), block_size)  # (Bt, Hkv, nb + 1, d) fp64
        bounds = search_bounds(prefix, cfg, lambda: block_minmax(rk.detach(), block_size))
        # Sum of the routing queries of t's block up to t, over the group: (Bt, Hkv, Gr, T, d) -> (Bt, Hkv, T, d)
        q_sums = rq.detach().view(bt, hkv, rgroup, seq_len, rd).sum(2, dtype=torch.float64)
        q_sums = F.pad(q_sums, (0, 0, 0, nb * block_size - seq_len))
        q_sums = q_sums.view(bt, hkv, nb, block_size, rd).cumsum(-2).view(bt, hkv, nb * block_size, rd)
        q_sums = q_sums[:, :, :seq_len]
        lo, hi = routed_bounds(doc_ids, seq_len, cfg, q.device)  # (Bt or 1, nb), (nb,)
        if doc_ids is None:
            key_start = torch.zeros(1, seq_len, dtype=torch.long, device=q.device)
        else:  # first token of each token's document (rows are nondecreasing)
            doc_ids = doc_ids.to(device=q.device, dtype=torch.long).contiguous()
            key_start = torch.searchsorted(doc_ids, doc_ids)  # (Bt, T)
    outs = []
    t0 = 0
    while t0 < seq_len:
        # Tokens [t0, t1): at most _CHUNK_TOKENS (each row searches its own prefix's pyramid).
        t1 = min(seq_len, t0 + _CHUNK_TOKENS)
        pos = torch.arange(t0, t1, device=q.device)  # (R,)
        blk = pos // block_size
        with torch.no_grad():
            q_sum = _query_means(q_sums[:, :, t0:t1], pos - blk * block_size + 1, rgroup, rd, _accumulate_dtype(rq))
            routed = _route_rows(q_sum, prefix, lo[:, blk], hi[blk], blk, cfg, bounds=bounds)[0]
            indices = _union_rows(routed, blk, cfg)  # (Bt, Hkv, R, S)
        far_rows = None if far is None else (far[0][:, :, t0:t1], far[1], cfg.local_blocks)
        outs.append(
            _attend_rows(q[:, :, t0:t1], k, v, indices, pos, key_start[:, t0:t1], block_size, scale, far=far_rows)
        )
        t0 = t1
    return torch.cat(outs, dim=2)  # (Bt, Hq, T, D)


def _no_leaf_tables() -> ValueError:
    return ValueError(
        "attention.leaf_score=bound: this DecodeState was built without the blocks' key min / max (under "
        "leaf_score=mean); prefill again with the setting it decodes with"
    )


class BeamTrace(NamedTuple):
    """Where one token's search kept a key block (:meth:`DecodeState.trace`); index = pyramid level, 0 = blocks."""

    rank: Tensor  # [Bt, Hkv, L] int64: the block's ancestor's rank among the candidates, -1: not a candidate
    width: Tensor  # [L] int64: nodes kept at the level (topk_blocks at 0); kept where 0 <= rank < width

    def lost_at(self) -> Tensor:
        """[Bt, Hkv] int64: the level at which the block's ancestor was dropped (not among the ``width`` best
        candidates), -1 where the block was routed, -2 where it is not routable (sink, local window, another
        document: not a candidate at the block level though never dropped)."""
        num = self.rank.shape[-1]
        present = self.rank >= 0
        finest = torch.where(present, torch.arange(num, device=self.rank.device), num).amin(-1)  # num: never
        at = finest.clamp(max=num - 1)
        kept = self.rank.gather(-1, at.unsqueeze(-1)).squeeze(-1) < self.width[at]
        routed = torch.where(finest == 0, -1, -2)
        return torch.where(finest >= num, -2, torch.where(kept, routed, finest))


@dataclass
class DecodeState:
    """Per-layer state of SSA decoding; what :func:`ssa_decode_step` needs besides the KV cache.

    ``prefix[..., j, :]`` is the sum of the keys of blocks < j for j <= nb (the last block possibly
    partial), zeros after; the buffer grows by doubling. All sums are fp64.
    """

    prefix: Tensor  # [Bt, Hkv, capacity + 1, D] fp64 key prefix sums over blocks
    key_sum: Tensor  # [Bt, Hkv, D] fp64: keys of the last block so far
    query_sum: Tensor  # [Bt, Hkv, D] fp64: queries of the last block so far, summed over the G heads of the group
    length: int  # tokens seen
    block_size: int
    doc: Tensor  # [Bt] int64: document id of the last token
    doc_start: Tensor  # [Bt] int64: first token of that document (no earlier key is attended)
    block_lo: Tensor  # [Bt] int64: lo of the last block's routed range (routed_bounds: >= sink_blocks)
    last_key: Tensor | None = None  # [Bt, Hkv, D] key of the last token as given: checks the cache still matches
    last_position: Tensor | None = None  # [Bt] int64 position id of the last token (HF glue: documents)
    group: int = 1  # query heads summed per kv head in query_sum (the scored q's Hq // Hkv)
    # node_score=bound: min / max tables of the complete blocks' means, extended as blocks complete (made lazily)
    bounds: BlockBounds | None = None
    # leaf_score=bound: per-dimension min / max of each block's keys [Bt, Hkv, capacity, D] fp32, the last block's
    # so far (grown like prefix); the tables above are then built over these instead of the means
    leaf_low: Tensor | None = None
    leaf_high: Tensor | None = None

    @property
    def num_blocks(self) -> int:
        return _num_blocks(self.length, self.block_size)

    @classmethod
    def empty(
        cls, batch: int, kv_heads: int, head_dim: int, cfg: SSAConfig, device: torch.device | None = None
    ) -> DecodeState:
        """State before the first token."""
        cfg.validate()
        zeros = torch.zeros(batch, kv_heads, head_dim, dtype=torch.float64, device=device)
        ids = torch.zeros(batch, dtype=torch.long, device=device)
        prefix = torch.zeros(batch, kv_heads, 17, head_dim, dtype=torch.float64, device=device)
        return cls(prefix, zeros, zeros.clone(), 0, cfg.block_size, ids, ids.clone(), ids + cfg.sink_blocks)

    @classmethod
    @torch.no_grad()
    def from_prefill(
        cls, q: Tensor, k: Tensor, cfg: SSAConfig, doc_ids: Tensor | None = None, last_key: Tensor | None = None
    ) -> DecodeState:
        """State after a prompt: q [Bt, Hq, T, D], k [Bt, Hkv, T, D] what the selector scores (post-RoPE q/k as
        cached, or a learned router's outputs), doc_ids [Bt, T] nondecreasing or None; last_key [Bt, Hkv, D]: the
        cached key of the last token (default k's). O(T * D) work, one pass over k and over q's last block."""
        _check_inputs(q, k, cfg, doc_ids)
        bt, hq, seq_len, d = q.shape
        hkv, block_size = k.shape[1], cfg.block_size
        nb = _num_blocks(seq_len, block_size)
        last = (nb - 1) * block_size  # first token of the last block
        sums = _key_prefix(k, block_size)  # (Bt, Hkv, nb + 1, D) fp64
        prefix = sums.new_zeros(bt, hkv, nb + 1 + max(16, nb // 4), d)  # headroom before the first growth
        prefix[:, :, : nb + 1] = sums
        key_sum = k[:, :, last:].sum(2, dtype=torch.float64)  # (Bt, Hkv, D)
        # (Bt, Hkv, G, r, D) -> (Bt, Hkv, r, D) -> (Bt, Hkv, D): heads first, then tokens in order, as decoding adds them
        query_sum = q[:, :, last:].reshape(bt, hkv, hq // hkv, -1, d).sum(2, dtype=torch.float64).cumsum(2)[:, :, -1]
        if doc_ids is None:
            doc = torch.zeros(bt, dtype=torch.long, device=q.device)
            doc_start = doc.clone()
        else:
            doc_ids = doc_ids.to(device=q.device, dtype=torch.long).contiguous()
            doc = doc_ids[:, -1].clone()
            doc_start = torch.searchsorted(doc_ids, doc_ids[:, -1:].contiguous()).squeeze(1)  # (Bt,)
        block_lo = routed_bounds(doc_ids, seq_len, cfg, q.device)[0][:, -1].expand(bt).clone()  # (Bt,)
        last_key = k[:, :, -1] if last_key is None else last_key
        state = cls(prefix, key_sum, query_sum, seq_len, block_size, doc, doc_start, block_lo, last_key.clone())
        state.group = hq // hkv
        if cfg.leaf_score == "bound":
            low, high = block_minmax(k, block_size)  # (Bt, Hkv, nb, D)
            state.leaf_low = low.new_zeros(bt, hkv, prefix.shape[2], d, dtype=torch.float32)
            state.leaf_high = torch.zeros_like(state.leaf_low)
            state.leaf_low[:, :, :nb], state.leaf_high[:, :, :nb] = low, high
        return state

    @torch.no_grad()
    def append(
        self, q_new: Tensor, k_new: Tensor, cfg: SSAConfig, doc_id: Tensor | None = None, last_key: Tensor | None = None
    ) -> None:
        """Take token t = length: q_new [Bt, Hq, D], k_new [Bt, Hkv, D] (what the selector scores), doc_id [Bt]
        (None: the last token's document), last_key [Bt, Hkv, D] its cached key (default k_new). O(D) work,
        plus a copy of the buffer when it doubles."""
        bt, hkv, d = k_new.shape
        t, block_size = self.length, self.block_size
        i = t // block_size
        if doc_id is not None:
            doc_id = doc_id.to(device=k_new.device, dtype=torch.long)
            if t > 0:  # a document starts wherever the id changes (ids are nondecreasing)
                self.doc_start = torch.where(doc_id != self.doc, t, self.doc_start)
            self.doc = doc_id.clone()
        self.group = q_new.shape[1] // hkv
        q_new = q_new.reshape(bt, hkv, -1, d).sum(2, dtype=torch.float64)  # (Bt, Hkv, D): over the group
        if t % block_size == 0:  # a new block: its routed range starts at the document of its first token
            self.key_sum = k_new.to(torch.float64)
            self.query_sum = q_new
            self.block_lo = (self.doc_start // block_size).clamp(min=cfg.sink_blocks)
        else:
            self.key_sum = self.key_sum + k_new
            self.query_sum = self.query_sum + q_new
        if self.prefix.shape[2] < i + 2:
            grown = self.prefix.new_zeros(bt, hkv, max(i + 2, 2 * self.prefix.shape[2]), d)
            grown[:, :, : self.prefix.shape[2]] = self.prefix
            self.prefix = grown
        self.prefix[:, :, i + 1] = self.prefix[:, :, i] + self.key_sum
        if cfg.leaf_score == "bound":
            self._extend_leaf(k_new, i, t % block_size == 0)
        self.last_key = (k_new if last_key is None else last_key).clone()
        self.length = t + 1

    def _extend_leaf(self, k_new: Tensor, i: int, new_block: bool) -> None:
        """leaf_score=bound: fold token key k_new [Bt, Hkv, D] into block i's min / max."""
        if self.leaf_low is None:
            if self.length > 0:
                raise _no_leaf_tables()
            self.leaf_low = k_new.new_zeros(
                *k_new.shape[:2], self.prefix.shape[2], k_new.shape[-1], dtype=torch.float32
            )
            self.leaf_high = torch.zeros_like(self.leaf_low)
        if self.leaf_low.shape[2] < i + 1:
            for name in ("leaf_low", "leaf_high"):
                old = getattr(self, name)
                grown = old.new_zeros(*old.shape[:2], max(i + 1, 2 * old.shape[2]), old.shape[-1])
                grown[:, :, : old.shape[2]] = old
                setattr(self, name, grown)
        k = k_new.float()
        self.leaf_low[:, :, i] = k if new_block else torch.minimum(self.leaf_low[:, :, i], k)
        self.leaf_high[:, :, i] = k if new_block else torch.maximum(self.leaf_high[:, :, i], k)

    @torch.no_grad()
    def route(self, cfg: SSAConfig, dtype: torch.dtype = torch.float32) -> Tensor:
        """The blocks the last token taken (t = length - 1) attends under the per-token rule: sinks ∪ routed ∪
        local window, [Bt, Hkv, 1, S] ascending, -1 padding last. What :func:`ssa_decode_step` attends with, and
        what the prefill's last query block selected (the block rule at a block's last token). ``dtype``: the
        scores' (``_accumulate_dtype`` of the query)."""
        routed, _, _ = self._search(cfg, dtype)
        return _union_rows(routed, torch.tensor([(self.length - 1) // self.block_size], device=routed.device), cfg)

    @torch.no_grad()
    def trace(self, cfg: SSAConfig, block: int, dtype: torch.dtype = torch.float32) -> BeamTrace:
        """Where :meth:`route`'s search kept or dropped key block ``block`` (a diagnostic: was a needle lost
        at a coarse level of the pyramid, or among the blocks themselves?)."""
        target = torch.tensor([block], device=self.prefix.device)
        _, ranks, levels = self._search(cfg, dtype, target)
        if ranks is None:  # nothing is routed (topk_blocks = 0): never a candidate
            shape = (*self.prefix.shape[:2], 1, int(levels.max()))
            ranks = torch.full(shape, -1, dtype=torch.long, device=self.prefix.device)
        return BeamTrace(ranks[:, :, 0], level_widths(levels, cfg)[0])

    def _search(self, cfg: SSAConfig, dtype: torch.dtype, target: Tensor | None = None):
        """``_route_rows`` for the last token taken."""
        bt, t, block_size = self.prefix.shape[0], self.length - 1, self.block_size
        pos = torch.tensor([t], device=self.prefix.device)
        q_sum = _query_means(
            self.query_sum.unsqueeze(2),
            pos - (t // block_size) * block_size + 1,
            self.group,
            self.query_sum.shape[-1],
            dtype,
        )
        i = t // block_size
        hi = pos // block_size - (cfg.local_blocks - 1)  # routed_bounds' hi of block t // block_size
        if cfg.leaf_score == "bound" and self.leaf_low is None and i > 0:
            raise _no_leaf_tables()

        # over the complete blocks < i (every routed block is one): O(D log n) a block
        def leaf() -> tuple[Tensor, Tensor]:
            return self.leaf_low, self.leaf_high

        self.bounds = search_bounds(self.prefix[:, :, : i + 1], cfg, leaf, self.bounds, num_blocks=i + 1)
        lo = self.block_lo.view(bt, 1)
        return _route_rows(q_sum, self.prefix, lo, hi, pos // block_size, cfg, target, self.bounds)


def ssa_decode_step(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    state: DecodeState,
    cfg: SSAConfig,
    scale: float | None = None,
    doc_id: Tensor | None = None,
    route_q: Tensor | None = None,
    route_k: Tensor | None = None,
    far: tuple[Tensor, object] | None = None,
) -> Tensor:
    """Attention output of one new token under the causal per-token rule, updating ``state``.

    q [Bt, Hq, 1, D] (post-RoPE); k_cache, v_cache [Bt, Hkv, T, D] with T = state.length + 1 (the cache
    already holds the new token); doc_id [Bt] int64, the new token's document (None: the previous token's);
    route_q [Bt, Hr, 1, d], route_k [Bt, Hkv, d]: the new token's routing query and key when a learned router
    scores (None: q and its cached key); far: (q_far [Bt, Hq, 1, D], HF rotary module) when
    ``cfg.far_distance`` > 0, with q and the cache un-rotated (``_attend_rows``; the PyTorch path only).
    Returns [Bt, Hq, 1, D] in q's dtype. Raises if the cache does not continue the state (another sequence,
    reordered or cropped).
    """
    bt, hq, one, d = q.shape
    hkv, t = k_cache.shape[1], state.length
    if one != 1 or k_cache.shape != (bt, hkv, t + 1, d) or v_cache.shape != k_cache.shape or hq % hkv:
        raise ValueError(
            f"need q [Bt, Hq, 1, D] and k_cache = v_cache = [Bt, Hkv, state.length + 1 = {t + 1}, D]; "
            f"got q {tuple(q.shape)}, k_cache {tuple(k_cache.shape)}, v_cache {tuple(v_cache.shape)}"
        )
    if state.block_size != cfg.block_size:
        raise ValueError(f"state.block_size={state.block_size} differs from cfg.block_size={cfg.block_size}")
    if state.last_key is not None and not torch.equal(k_cache[:, :, t - 1], state.last_key):
        raise ValueError("k_cache does not continue this DecodeState (another sequence, or reordered / cropped)")
    rq = q[:, :, 0] if route_q is None else route_q[:, :, 0]
    rk = k_cache[:, :, t] if route_k is None else route_k
    state.append(rq, rk, cfg, doc_id, last_key=k_cache[:, :, t])
    block_size = cfg.block_size
    pos = torch.tensor([t], device=q.device)
    indices = state.route(cfg, _accumulate_dtype(q))  # (Bt, Hkv, 1, S)
    scale = d**-0.5 if scale is None else scale
    key_start = state.doc_start.view(bt, 1)
    if far is not None:
        rows_far = (far[0], far[1], cfg.local_blocks)
        return _attend_rows(q, k_cache, v_cache, indices, pos, key_start, block_size, scale, far=rows_far)
    if q.is_cuda and resolve_backend(cfg.backend, q.device) == "triton":  # Triton flash-decoding, same semantics
        from ssa_kernels.decode.triton import decode_attention_triton

        return decode_attention_triton(q, k_cache, v_cache, indices, pos, key_start, block_size, scale)
    return _attend_rows(q, k_cache, v_cache, indices, pos, key_start, block_size, scale)
