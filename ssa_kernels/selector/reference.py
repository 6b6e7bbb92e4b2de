"""PyTorch reference of the SSA block selector: which key blocks each (query block, kv head) attends to.

Keys are pooled into a pyramid: level 0 holds the mean key of every block of ``block_size`` tokens, and
each node of level l+1 is the token-count-weighted mean of up to ``branching`` consecutive level-l nodes,
up to the first level with at most ``top_nodes`` nodes (O(n) work and memory in all). Each query block is
summarised by the mean of its queries over its real tokens and the G query heads of its kv-head group,
and a node scores ``dot(query summary, node summary) / sqrt(D)``. The routed candidates of query block i
are the blocks j with ``max(lo_i, sink_blocks) <= j < i - local_blocks + 1`` (lo_i: first block of the
document of the block's first token, else 0); a beam search scores every coarsest-level node overlapping
that range, keeps the best ``beam`` of them, scores their children, keeps the best, ... and at level 0
keeps the best ``topk_blocks`` blocks. All query blocks of all (batch, kv head) pairs walk down together,
one vectorised step per level on tensors of shape [Bt, Hkv, nb, beam * branching], reading node summaries
by gather from the flattened level: with ``L = log_branching(nb / top_nodes)`` levels each query block
scores at most ``top_nodes + L * beam * branching`` nodes, so selection costs O(n log n) time and O(n)
memory per level, and no tensor of nb x nb, T x nb or T x T elements is ever formed. Node summaries are
read from fp64 prefix sums over the blocks (the pyramid in O(1) per node), restricted to the blocks the
query block may route to: a node straddling the end of the range is scored by its visible part, so no
key after the query block influences the selection. Each query block searches the pyramid of its own prefix
(``row_levels``) and node sums are divided by the nominal node size, so nothing after the block, not even
the sequence length, changes its choice: causal, and equal in training and decoding. Ties between equal
scores go to the smaller node index at every level. Sink blocks and the local window (diagonal block
included) are added unconditionally; the union is returned sorted, deduplicated and padded with -1.

With ``node_score="bound"`` a node above the blocks scores instead an upper bound of its best visible block,
sum over dims of max(q_d * min_d, q_d * max_d) with min / max over the means of its blocks inside the routed
range, read in O(1) per node from sparse min / max tables over the block means (:func:`block_bounds`, O(n log n)
memory): a needle block no longer averages with its node's other blocks, so narrow beams keep it. With
``leaf_score="bound"`` the blocks themselves are scored the same way over their own token keys (per-dimension min /
max of each block, :func:`block_minmax`), and the tables are built over those (a node's bound then bounds its
blocks' bounds): a distinctive token is no longer averaged with its block's other tokens.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ssa_kernels.config import SSAConfig

__all__ = [
    "BlockBounds",
    "PooledRoute",
    "Selection",
    "block_bounds",
    "block_minmax",
    "key_pyramid",
    "query_summary",
    "routed_bounds",
    "routing_scores",
    "routing_scores_pooled",
    "select_blocks",
    "select_blocks_pooled",
]


@dataclass
class Selection:
    """What :func:`select_blocks` returns; nb = ceil(T / block_size), S = sink + topk + local blocks."""

    indices: Tensor  # [Bt, Hkv, nb, S] int64: sink ∪ routed ∪ local blocks, ascending, -1 padding at the end
    routed: Tensor  # [Bt, Hkv, nb, topk_blocks] int64: routed blocks ascending, -1 padding at the end
    routed_scores: Tensor  # [Bt, Hkv, nb, topk_blocks] float: score of each routed block, -inf for padding
    candidates: Tensor  # [Bt, Hkv, nb] int64: nodes scored over all levels (those overlapping the routed range)
    # (q̄, k̄), each [Bt, Hkv, nb, D] fp32: the mean query (over the block and the group) and mean key of each block
    # as the fast selector pooled them, reused by the attention's routing gradient (``routing.add_routing_grads``);
    # None where the selector does not keep them (the reference, pooled routes, q and k that carry no gradient)
    means: tuple[Tensor, Tensor] | None = None


class PooledRoute(NamedTuple):
    """What a learned router hands the selector when it projects block-pooled hidden states: per (batch, kv
    head, block) the mean routing query and key over the block's real tokens, [Bt, Hkv, nb, D] each, and
    the sequence length T (nb = ceil(T / block_size)). Routing needs nothing finer than these means, so
    the per-token [Bt, Hkv, T, D] routing tensors (and their gradients) are never made."""

    q_mean: Tensor
    k_mean: Tensor
    seq_len: int
    # leaf_score=bound: per-dimension min / max of each block's token keys [Bt, Hkv, nb, D] (SSARouter.pooled
    # with leaf_bounds), what the blocks are then scored by; None otherwise
    k_low: Tensor | None = None
    k_high: Tensor | None = None


def _check_pooled(route: PooledRoute, cfg: SSAConfig, doc_ids: Tensor | None) -> None:
    cfg.validate()
    nb = _num_blocks(route.seq_len, cfg.block_size)
    qm, km = route.q_mean, route.k_mean
    if qm.dim() != 4 or qm.shape != km.shape or qm.shape[2] != nb:
        raise ValueError(
            f"PooledRoute needs q_mean = k_mean = [Bt, Hkv, nb, D] with nb = ceil({route.seq_len} / "
            f"{cfg.block_size}) = {nb}; got {tuple(qm.shape)} and {tuple(km.shape)}"
        )
    if doc_ids is not None and tuple(doc_ids.shape) != (qm.shape[0], route.seq_len):
        raise ValueError(f"doc_ids must be [Bt, T] = {(qm.shape[0], route.seq_len)}; got {tuple(doc_ids.shape)}")
    if cfg.leaf_score == "bound" and cfg.topk_blocks > 0:
        if route.k_low is None or route.k_high is None:
            raise ValueError(
                "attention.leaf_score=bound scores blocks by their token keys' min / max, which this PooledRoute "
                "lacks (k_low / k_high: SSARouter.pooled(..., leaf_bounds=True) makes them; the sequence-parallel "
                "wrappers do not): set attention.leaf_score=mean"
            )
        if route.k_low.shape != km.shape or route.k_high.shape != km.shape:
            raise ValueError(f"PooledRoute k_low / k_high must be k_mean's shape {tuple(km.shape)}")


def _accumulate_dtype(x: Tensor) -> torch.dtype:
    # Summaries of bf16/fp16 inputs are pooled and scored in fp32; fp64 stays fp64 (gradcheck).
    return torch.promote_types(x.dtype, torch.float32)


def _num_blocks(seq_len: int, block_size: int) -> int:
    return -(-seq_len // block_size)


def _block_token_counts(seq_len: int, block_size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Real tokens per block, [nb]: block_size everywhere but a partial last block."""
    starts = torch.arange(_num_blocks(seq_len, block_size), device=device) * block_size
    return (seq_len - starts).clamp(max=block_size).to(dtype)


def _block_sums(x: Tensor, block_size: int, dtype: torch.dtype) -> Tensor:
    """Sum over each block of real tokens, accumulated in ``dtype``: [..., T, D] -> [..., nb, D].

    Reads x through views (no padded or up-cast copy of x: only the [..., nb, D] result is allocated).
    """
    full = x.shape[-2] // block_size * block_size
    sums = (
        x[..., :full, :].unflatten(-2, (-1, block_size)).sum(-2, dtype=dtype)
    )  # (..., T // B, B, D) -> (..., T // B, D)
    if full < x.shape[-2]:  # partial last block
        sums = torch.cat([sums, x[..., full:, :].sum(-2, keepdim=True, dtype=dtype)], dim=-2)  # (..., nb, D)
    return sums


def block_minmax(x: Tensor, block_size: int) -> tuple[Tensor, Tensor]:
    """Per-dimension min and max over each block's real tokens: [..., T, D] -> two [..., nb, D] fp32 tensors
    (fp64 for fp64 input), through views of x like :func:`_block_sums` (``leaf_score=bound``'s leaf summaries)."""
    dtype, full = _accumulate_dtype(x), x.shape[-2] // block_size * block_size
    blocks = x[..., :full, :].unflatten(-2, (-1, block_size))  # (..., T // B, B, D)
    low, high = blocks.amin(-2).to(dtype), blocks.amax(-2).to(dtype)
    if full < x.shape[-2]:  # partial last block
        tail = x[..., full:, :]
        low = torch.cat([low, tail.amin(-2, keepdim=True).to(dtype)], dim=-2)
        high = torch.cat([high, tail.amax(-2, keepdim=True).to(dtype)], dim=-2)
    return low, high


def block_means(x: Tensor, block_size: int) -> Tensor:
    """Mean over each block's real tokens: [..., T, D] -> [..., nb, D] in fp32 (fp64 for fp64 input)."""
    sums = _block_sums(x, block_size, _accumulate_dtype(x))
    return sums / _block_token_counts(x.shape[-2], block_size, x.device, sums.dtype)[:, None]


def query_summary(q: Tensor, num_kv_heads: int, block_size: int) -> Tensor:
    """Mean query of each block over its real tokens and the G query heads of each kv head.

    q: [Bt, Hq, T, D] with Hq = G * num_kv_heads (heads h*G .. h*G+G-1 belong to kv head h).
    Returns [Bt, Hkv, nb, D] in fp32 (fp64 for fp64 input); differentiable.
    """
    bt, hq, seq_len, d = q.shape
    group = hq // num_kv_heads
    dtype = _accumulate_dtype(q)
    # (Bt, Hkv, G, T, D) -> (Bt, Hkv, G, nb, D) -> (Bt, Hkv, nb, D): pool tokens first, the small tensor over G
    sums = _block_sums(q.view(bt, num_kv_heads, group, seq_len, d), block_size, dtype).sum(2)
    counts = _block_token_counts(seq_len, block_size, q.device, dtype) * group  # (nb,)
    return sums / counts[:, None]


def key_pyramid(k: Tensor, cfg: SSAConfig) -> list[Tensor]:
    """Node summaries per level, finest first: level l is [Bt, Hkv, ceil(nb / branching**l), D].

    Level 0 is the mean key of every block over its real tokens; a level-(l+1) node is the
    token-count-weighted mean of its (up to) ``branching`` children, i.e. the mean of all real tokens
    below it. Levels are added until one has at most ``cfg.top_nodes`` nodes (or a single node).
    """
    seq_len = k.shape[-2]
    sums = _block_sums(k, cfg.block_size, _accumulate_dtype(k))  # (Bt, Hkv, nb, D)
    counts = _block_token_counts(seq_len, cfg.block_size, k.device, sums.dtype)  # (nb,)
    levels = [sums / counts[:, None]]
    while sums.shape[-2] > max(cfg.top_nodes, 1):
        pad = -sums.shape[-2] % cfg.branching
        # (Bt, Hkv, n_l + pad, D) -> (Bt, Hkv, n_{l+1}, branching, D) -> (Bt, Hkv, n_{l+1}, D)
        sums = F.pad(sums, (0, 0, 0, pad)).unflatten(-2, (-1, cfg.branching)).sum(-2)
        counts = F.pad(counts, (0, pad)).view(-1, cfg.branching).sum(-1)  # (n_{l+1},)
        levels.append(sums / counts[:, None])
    return levels


def routed_bounds(doc_ids: Tensor | None, seq_len: int, cfg: SSAConfig, device: torch.device) -> tuple[Tensor, Tensor]:
    """Routed range [lo, hi) of every query block: ``lo`` [Bt or 1, nb], ``hi`` [nb] (int64).

    lo_i = max(sink_blocks, first block of the document of the first token of block i) and
    hi_i = i - local_blocks + 1, so routed blocks are causal, in the query's document, and disjoint
    from the sink blocks and the local window. The range is empty where lo_i >= hi_i.
    """
    nb = _num_blocks(seq_len, cfg.block_size)
    block = torch.arange(nb, device=device)
    hi = block - (cfg.local_blocks - 1)
    if doc_ids is None:
        lo = torch.zeros(1, nb, dtype=torch.long, device=device)
    else:
        doc_ids = doc_ids.to(device=device, dtype=torch.long).contiguous()
        first_doc = doc_ids[:, block * cfg.block_size].contiguous()  # (Bt, nb): document of each block's first token
        # doc_ids rows are nondecreasing, so the document starts at the first position holding its id.
        lo = torch.searchsorted(doc_ids, first_doc) // cfg.block_size  # (Bt, nb)
    return lo.clamp(min=cfg.sink_blocks), hi


def routable_mask(
    doc_ids: Tensor | None, seq_len: int, cfg: SSAConfig, device: torch.device, query_blocks: Tensor | None = None
) -> Tensor:
    """[Bt or 1, nq, nb] bool: key block j lies in query block i's routed range (:func:`routed_bounds`), for the
    given query blocks (default: every block, nq = nb)."""
    lo, hi = routed_bounds(doc_ids, seq_len, cfg, device)
    if query_blocks is not None:
        lo, hi = lo[:, query_blocks], hi[query_blocks]
    j = torch.arange(_num_blocks(seq_len, cfg.block_size), device=device)
    return (j >= lo[:, :, None]) & (j < hi[:, None])


def _check_inputs(q: Tensor, k: Tensor, cfg: SSAConfig, doc_ids: Tensor | None) -> None:
    cfg.validate()
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"q must be [Bt, Hq, T, D] and k [Bt, Hkv, T, D]; got {tuple(q.shape)} and {tuple(k.shape)}")
    (bt, hq, seq_len, d), (bt_k, hkv, seq_len_k, d_k) = q.shape, k.shape
    if (bt, seq_len, d) != (bt_k, seq_len_k, d_k) or hq % hkv:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} need equal Bt, T, D and Hq a multiple of Hkv")
    if seq_len < 1:
        raise ValueError("the sequence must hold at least one token")
    if doc_ids is not None and tuple(doc_ids.shape) != (bt, seq_len):
        raise ValueError(f"doc_ids must be [Bt, T] = {(bt, seq_len)}; got {tuple(doc_ids.shape)}")


def _default_beam(level: int, cfg: SSAConfig) -> int:
    """Nodes kept at ``level`` (>= 1) unless cfg.beam_widths says: twice the nodes that can hold
    topk_blocks leaves, so the last beam offers 2 x topk candidate blocks, and at least cfg.beam_min."""
    return max(1, cfg.beam_min, 2 * math.ceil(cfg.topk_blocks / cfg.branching**level))


def beam_width(level: int, levels: int, cfg: SSAConfig) -> int:
    """Nodes a row of pyramid height ``levels`` keeps at ``level`` (>= 1): everything while the level is above
    the row's own pyramid (at most top_nodes nodes overlap its range there); at a level whose nodes span
    ``cfg.beam_full_span`` tokens or more, every node of the pyramid (top_nodes x branching^(levels - 1 -
    level) at most); else ``cfg.beam_widths``, listed from the row's coarsest level down (its last entry serves
    finer levels when it is shorter), or the default. The one rule of the reference, fast and decode searches."""
    if level >= levels:
        return max(cfg.top_nodes, 1)
    if cfg.beam_full_span > 0 and cfg.block_size * cfg.branching**level >= cfg.beam_full_span:
        return max(cfg.top_nodes, 1) * cfg.branching ** (levels - 1 - level)
    if cfg.beam_widths:
        return max(1, cfg.beam_widths[min(levels - 1 - level, len(cfg.beam_widths) - 1)])
    return _default_beam(level, cfg)


def _overlaps(node: Tensor, cover: int, lo: Tensor, hi: Tensor) -> Tensor:
    """Whether a node (covering blocks [node*cover, (node+1)*cover)) holds a block of [lo, hi).

    Nodes past the last block of the level fail too: hi <= nb, so node*cover < hi implies node < n_l.
    """
    return (node >= 0) & (node * cover < hi) & ((node + 1) * cover > lo) & (lo < hi)


def _best(node: Tensor, score: Tensor, keep: int) -> tuple[Tensor, Tensor]:
    """The ``keep`` best (node, score) pairs of each row, best first; padding is node -1 / score -inf.

    Valid nodes must come in ascending order along the row: the stable sort then breaks ties in favour
    of the smaller node index (torch.topk does not specify its tie order).
    """
    order = score.argsort(dim=-1, descending=True, stable=True)[..., :keep]  # (..., keep)
    return node.gather(-1, order), score.gather(-1, order)


def _ascending(node: Tensor, *aligned: Tensor) -> tuple[Tensor, ...]:
    """Sort each row by node index, padding (-1) last, and carry ``aligned`` tensors along."""
    key = torch.where(node < 0, torch.iinfo(node.dtype).max, node)
    order = key.argsort(dim=-1, stable=True)
    return tuple(t.gather(-1, order) for t in (node, *aligned))


# Candidate summaries gathered at once, per (b, h, query block): bounds the [Bt, Hkv, nb, chunk, D] gather
# buffer at 16 KiB of fp32 per query block instead of M x D (e.g. 224 x 128 at the default config).
_GATHER_FLOATS = 4096
# ... unless the whole buffer stays under this many floats (16 MiB of fp32) with more: a decode step searches one
# query block, and 16 KiB chunks split its 4,096 bound-scored blocks (beams of 512 level-1 nodes at 1M) into 256
# chunks of ~10 small kernels each, so a 1M decode step on an H100 was launch-bound at ~1.2 s for ten layers
# (docs/functional_context.md, "Twenty-eighth session"). A prefill's many query blocks keep the bound above.
_GATHER_TOTAL = 1 << 22


def _gather_chunk(rows: int, floats_per_slot: int) -> int:
    """Candidate slots gathered per chunk for ``rows`` (b, h, query block) rows of ``floats_per_slot`` floats each:
    ``_GATHER_FLOATS`` per row, or more while the whole chunk stays within ``_GATHER_TOTAL``."""
    return max(1, _GATHER_FLOATS // floats_per_slot, _GATHER_TOTAL // max(1, rows * floats_per_slot))


def _score_nodes(q_sum: Tensor, level: Tensor, node: Tensor) -> Tensor:
    """Scores of the nodes ``node`` [Bt, Hkv, nb, M] of one level [Bt, Hkv, n, D] against the (already
    scaled) query summaries [Bt, Hkv, nb, D], read by gather from the flattened level: [Bt, Hkv, nb, M]."""
    bt, hkv, n, d = level.shape
    row0 = (torch.arange(bt * hkv, device=node.device) * n).view(bt, hkv, 1, 1)  # first row of each (b, h)
    rows = node.clamp(0, n - 1) + row0  # (Bt, Hkv, nb, M): padding reads row 0, masked by the caller
    flat = level.reshape(-1, d)  # (Bt * Hkv * n, D)
    chunk = _gather_chunk(math.prod(rows.shape[:-1]), d)
    scores = []
    for part in rows.split(chunk, dim=-1):  # a few chunks of candidate slots, never of query blocks
        picked = flat.index_select(0, part.reshape(-1)).view(*part.shape, d)  # (Bt, Hkv, nb, chunk, D)
        scores.append((picked @ q_sum.unsqueeze(-1)).squeeze(-1))  # (Bt, Hkv, nb, chunk, 1) -> (..., chunk)
    return torch.cat(scores, dim=-1)  # (Bt, Hkv, nb, M)


class _RoutedScores(torch.autograd.Function):
    """:func:`_score_nodes` with a backward that re-gathers instead of saving: autograd through the chunked
    gathers would keep every gathered [..., M, D] chunk, i.e. nb x topk x D floats (7.5 GB at 1M tokens, 8
    kv heads, fp32). Saves only the inputs; both passes are chunked over the M slots."""

    @staticmethod
    def forward(ctx, q_sum: Tensor, level: Tensor, node: Tensor) -> Tensor:
        ctx.save_for_backward(q_sum, level, node)
        return _score_nodes(q_sum, level, node)

    @staticmethod
    def backward(ctx, grad: Tensor):
        q_sum, level, node = ctx.saved_tensors
        grad = torch.nan_to_num(grad.to(q_sum.dtype), nan=0.0, posinf=0.0, neginf=0.0)  # masked slots
        chunk = max(1, _GATHER_FLOATS // level.shape[-1])
        want_q, want_level = ctx.needs_input_grad[:2]
        return (*scores_backward(q_sum, level, node, grad, chunk, want_q, want_level), None)


def scores_backward(
    q_sum: Tensor, level: Tensor, node: Tensor, grad: Tensor, chunk: int, want_q: bool = True, want_level: bool = True
) -> tuple[Tensor | None, Tensor | None]:
    """Gradients of ``q_sum . level[node]`` (:func:`_score_nodes`) for ``grad`` [Bt, Hkv, nb, M] (finite, 0 on
    padding): d q_sum [Bt, Hkv, nb, D] and d level [Bt, Hkv, n, D] (None where not wanted), gathering
    ``chunk`` of the M slots at a time, re-gathered rather than saved. Also serves the attention backends'
    fused routing gradient (``attention/routing.py``)."""
    bt, hkv, n, d = level.shape
    row0 = (torch.arange(bt * hkv, device=node.device) * n).view(bt, hkv, 1, 1)
    rows = node.clamp(0, n - 1) + row0  # (Bt, Hkv, nb, M) as in _score_nodes
    flat = level.reshape(-1, d)
    d_q = torch.zeros_like(q_sum) if want_q else None
    d_level = torch.zeros_like(flat) if want_level else None
    for part, g in zip(rows.split(chunk, dim=-1), grad.split(chunk, dim=-1)):
        if d_q is not None:
            picked = flat.index_select(0, part.reshape(-1)).view(*part.shape, d)  # (Bt, Hkv, nb, c, D)
            d_q += (g.unsqueeze(-2) @ picked).squeeze(-2)  # (Bt, Hkv, nb, 1, c) @ (.., c, D) -> (Bt, Hkv, nb, D)
        if d_level is not None:
            d_level.index_add_(0, part.reshape(-1), (g.unsqueeze(-1) * q_sum.unsqueeze(-2)).reshape(-1, d))
    return d_q, d_level.view_as(level) if d_level is not None else None


def _num_levels(nb: int, cfg: SSAConfig) -> int:
    """Levels of the pyramid over nb blocks (as :func:`key_pyramid` builds it)."""
    levels, n = 1, nb
    while n > max(cfg.top_nodes, 1):
        n, levels = -(-n // cfg.branching), levels + 1
    return levels


def _key_prefix(k: Tensor, block_size: int) -> Tensor:
    """Prefix sums of key-block sums, in fp64: [Bt, Hkv, nb+1, D], row 0 = 0. Any run of blocks
    [s, e) then has sum P[e] - P[s] in O(1): the pyramid's nodes, and also the parts of them that a
    query block may see."""
    sums = _block_sums(k, block_size, torch.float64)  # (Bt, Hkv, nb, D)
    return F.pad(sums.cumsum(-2), (0, 0, 1, 0))  # (Bt, Hkv, nb + 1, D)


def _score_ranges(
    q_sum: Tensor, prefix: Tensor, node: Tensor, cover: int, block_size: int, lo: Tensor, hi: Tensor
) -> Tensor:
    """Scores of nodes [Bt, Hkv, nb, M] covering ``cover`` blocks each, every node summed only over
    its blocks inside the query block's routed range [lo, hi): no key after the range (none after the
    query block) ever influences the choice. The sum is divided by the node's nominal token count
    (cover x block_size), as if hidden blocks scored 0: a sliver of a node is not favoured over whole
    nodes (whose means average many blocks) just because it averages few, and the score depends on
    nothing past the range, not even the sequence length. Invalid entries come back finite but
    meaningless (the caller masks them)."""
    bt, hkv, n1, d = prefix.shape
    start = torch.maximum(node * cover, lo).clamp(0, n1 - 1)  # (Bt, Hkv, nb, M)
    end = torch.minimum((node + 1) * cover, hi).clamp(0, n1 - 1)
    end = torch.maximum(end, start)
    row0 = (torch.arange(bt * hkv, device=node.device) * n1).view(bt, hkv, 1, 1)  # first row of each (b, h)
    flat = prefix.reshape(-1, d)  # (Bt * Hkv * (nb + 1), D)
    qd = q_sum.to(torch.float64).unsqueeze(-1)  # (Bt, Hkv, nb, D, 1)
    chunk = _gather_chunk(math.prod(start.shape[:-1]), d)
    parts = []
    for s_part, e_part in zip(start.split(chunk, dim=-1), end.split(chunk, dim=-1)):
        hi_rows = flat.index_select(0, (e_part + row0).reshape(-1)).view(*e_part.shape, d)  # (..., chunk, D)
        lo_rows = flat.index_select(0, (s_part + row0).reshape(-1)).view(*s_part.shape, d)
        parts.append(((hi_rows - lo_rows) @ qd).squeeze(-1))  # (Bt, Hkv, nb, chunk)
    return (torch.cat(parts, dim=-1) / (cover * block_size)).to(q_sum.dtype)  # (Bt, Hkv, nb, M)


class BlockBounds(NamedTuple):
    """Per-dimension min and max of the block means (``leaf_score=bound``: of the blocks' token keys) over any
    run of blocks, each in O(1) (``node_score=bound`` / ``leaf_score=bound``).

    Sparse tables: ``low[j, b]`` / ``high[j, b]`` are the elementwise min / max of the means of blocks
    b .. b + 2^j - 1, so a run [s, e) is covered by the two overlapping runs of 2^j blocks from s and to e, with
    j = floor(log2(e - s)). Written by hand: the pyramid's nodes are aligned, but a node straddling a query
    block's routed range needs the bound of any run of its blocks, and a min / max pyramid cannot give that
    without walking the node's children (O(branching x levels) per node instead of O(1)). Built for runs of up
    to 2^(J-1) blocks; entries whose run passes block ``blocks`` are unwritten (never read: every range ends at
    or before it)."""

    low: Tensor  # [J, Bt, Hkv, capacity, D] fp32 (block means computed in fp64; min / max need no more)
    high: Tensor  # [J, Bt, Hkv, capacity, D] fp32
    blocks: int  # blocks covered: entries of runs within blocks < this are written


def bound_span(num_blocks: int, cfg: SSAConfig) -> int:
    """The longest run of blocks a search over ``num_blocks`` blocks bounds: a node of its coarsest level."""
    return cfg.branching ** (_num_levels(num_blocks, cfg) - 1)


def block_bounds(
    prefix: Tensor,
    block_size: int,
    span: int,
    bounds: BlockBounds | None = None,
    leaf: tuple[Tensor, Tensor] | None = None,
    dtype: torch.dtype = torch.float32,
) -> BlockBounds:
    """:class:`BlockBounds` over the n = prefix.shape[2] - 1 blocks of fp64 key prefix sums [Bt, Hkv, n + 1, D]
    (block mean = block sum / block_size: every bounded block is complete), for runs of up to ``span`` blocks.
    Memory: 2 x J x Bt x Hkv x capacity x D fp32 numbers, J = floor(log2(span)) + 1.
    Given ``bounds`` over the first bounds.blocks of these blocks (as a decode state grows), only the entries
    of runs ending in the new blocks are computed (O((n - bounds.blocks) x J x D)); its buffers are reused
    unless they are too small or too shallow (then rebuilt, a few times over a whole sequence). ``leaf``: the
    blocks' own (min, max) [Bt, Hkv, >= n, D] (``leaf_score=bound``, :func:`block_minmax` of the token keys), which
    then replace the block means as the tables' entries for single blocks. ``dtype``: the new tables' (fp32; the
    fast search asks for bf16 where every leaf entry is a bf16 value, when min / max keep them exact)."""
    bt, hkv, n1, d = prefix.shape
    n, levels = n1 - 1, max(1, span.bit_length())  # 2^(levels - 1) <= span
    done = 0 if bounds is None else bounds.blocks
    if bounds is None or bounds.low.shape[0] < levels or bounds.low.shape[3] < n:
        cap = n if bounds is None else max(n, 2 * bounds.low.shape[3])
        levels = max(levels, 0 if bounds is None else bounds.low.shape[0])
        # fp32: half the memory of fp64 (the issue-6 model at 1M: J = 10, 2 x 168 MB a layer); the means are
        # rounded once from fp64, identically however the tables are built, so decoding still equals training.
        low = prefix.new_zeros(levels, bt, hkv, cap, d, dtype=dtype if bounds is None else bounds.low.dtype)
        high = torch.zeros_like(low)
        if bounds is not None and bounds.low.shape[0] == levels:  # grown, not deepened: keep what was written
            low[:, :, :, : bounds.low.shape[3]] = bounds.low
            high[:, :, :, : bounds.high.shape[3]] = bounds.high
        else:
            done = 0
    else:
        low, high = bounds.low, bounds.high
    if done < n and leaf is not None:
        low[0, :, :, done:n], high[0, :, :, done:n] = leaf[0][:, :, done:n], leaf[1][:, :, done:n]
    elif done < n:
        low[0, :, :, done:n] = high[0, :, :, done:n] = (prefix[:, :, done + 1 :] - prefix[:, :, done:-1]) / block_size
    for j in range(1, low.shape[0]):
        half = 2 ** (j - 1)
        s0, s1 = max(0, done - 2 * half + 1), n - 2 * half + 1  # runs of 2^j blocks ending in blocks done .. n-1
        if s0 < s1:
            low[j, :, :, s0:s1] = torch.minimum(low[j - 1, :, :, s0:s1], low[j - 1, :, :, s0 + half : s1 + half])
            high[j, :, :, s0:s1] = torch.maximum(high[j - 1, :, :, s0:s1], high[j - 1, :, :, s0 + half : s1 + half])
    return BlockBounds(low, high, n)


def _bound_ranges(q_sum: Tensor, bounds: BlockBounds, node: Tensor, cover: int, lo: Tensor, hi: Tensor) -> Tensor:
    """Upper bounds of the best block score of nodes [Bt, Hkv, nb, M] covering ``cover`` blocks each, over their
    blocks inside [lo, hi): sum over dims of max(q_d x min_d, q_d x max_d), min / max over those blocks' means
    (>= q . mean of each of them). Invalid entries come back finite but meaningless (the caller masks them)."""
    _, bt, hkv, cap, d = bounds.low.shape
    start = torch.maximum(node * cover, lo).clamp(0, cap - 1)  # (Bt, Hkv, nb, M)
    end = torch.minimum((node + 1) * cover, hi).clamp(0, cap)
    length = (end - start).clamp(min=1)
    j = torch.zeros_like(length)
    for level in range(1, bounds.low.shape[0]):
        j += length >= 2**level  # floor(log2(length)), exact in integers
    last = (end - (1 << j)).clamp(0, cap - 1)  # the second run of 2^j blocks, ending at end - 1
    row0 = (torch.arange(bt * hkv, device=node.device) * cap).view(bt, hkv, 1, 1) + j * (bt * hkv * cap)
    low, high = bounds.low.reshape(-1, d), bounds.high.reshape(-1, d)
    qd = q_sum.to(torch.float64).unsqueeze(-2)  # (Bt, Hkv, nb, 1, D)
    chunk = _gather_chunk(math.prod(start.shape[:-1]), 4 * d)  # four gathers (two runs x min / max) live at once
    parts = []
    for s_part, e_part, r_part in zip(start.split(chunk, -1), last.split(chunk, -1), row0.split(chunk, -1)):
        a, b = (s_part + r_part).reshape(-1), (e_part + r_part).reshape(-1)
        mn = torch.minimum(low.index_select(0, a), low.index_select(0, b)).view(*s_part.shape, d).double()
        mx = torch.maximum(high.index_select(0, a), high.index_select(0, b)).view(*s_part.shape, d).double()
        parts.append(torch.maximum(mn * qd, mx * qd).sum(-1))  # (Bt, Hkv, nb, chunk)
    return torch.cat(parts, dim=-1).to(q_sum.dtype)


def _node_scores(
    q_sum: Tensor, prefix: Tensor, bounds: BlockBounds | None, node: Tensor, cover: int, cfg: SSAConfig, lo, hi
) -> Tensor:
    """Scores of nodes covering ``cover`` blocks: their bound (``bounds`` given and ``cfg.node_score`` bound
    above the blocks, ``cfg.leaf_score`` bound at them) or their range-restricted mean (:func:`_score_ranges`)."""
    if bounds is not None and (cfg.node_score if cover > 1 else cfg.leaf_score) == "bound":
        return _bound_ranges(q_sum, bounds, node, cover, lo, hi)
    return _score_ranges(q_sum, prefix, node, cover, cfg.block_size, lo, hi)


def needs_bounds(cfg: SSAConfig) -> bool:
    """Whether a search under ``cfg`` reads :class:`BlockBounds` (a bound at the blocks or above them)."""
    return cfg.node_score == "bound" or cfg.leaf_score == "bound"


def search_bounds(
    prefix: Tensor,
    cfg: SSAConfig,
    leaf,
    bounds: BlockBounds | None = None,
    num_blocks: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> BlockBounds | None:
    """The tables a search under ``cfg`` reads over the n = prefix.shape[2] - 1 blocks (None when it reads none):
    over block means, or with ``cfg.leaf_score`` bound over ``leaf()`` (the blocks' token-key (min, max)), for the
    coarsest node of a pyramid over ``num_blocks`` (default n) blocks when nodes are bounded too, else single
    blocks. ``bounds``: tables over the first blocks, extended (:func:`block_bounds`); ``dtype``: new tables'."""
    if not needs_bounds(cfg):
        return None
    n = prefix.shape[2] - 1 if num_blocks is None else num_blocks
    span = bound_span(n, cfg) if cfg.node_score == "bound" else 1
    leaf_values = leaf() if cfg.leaf_score == "bound" else None
    return block_bounds(prefix, cfg.block_size, span, bounds, leaf_values, dtype)


def row_levels(num_rows: int, cfg: SSAConfig, device: torch.device) -> Tensor:
    """Pyramid height of each query block i, [num_rows]: that of a sequence of i + 1 blocks, so a
    block's search never depends on how many blocks follow it (training = decoding)."""
    return torch.tensor([_num_levels(i + 1, cfg) for i in range(num_rows)], dtype=torch.long, device=device)


def _row_beams(level: int, levels: Tensor, cfg: SSAConfig) -> Tensor:
    """:func:`beam_width` of each row at ``level`` (>= 1), [R], from one entry per pyramid height."""
    widths = [beam_width(level, height, cfg) for height in range(int(levels.max()) + 1)]
    return torch.tensor(widths, device=levels.device)[levels]


def beam_search(
    q_sum: Tensor,
    prefix: Tensor,
    lo: Tensor,
    hi: Tensor,
    levels: Tensor,
    cfg: SSAConfig,
    target: Tensor | None = None,
    bounds: BlockBounds | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Coarse-to-fine search for R query rows: q_sum [Bt, Hkv, R, D] (scaled query summaries),
    prefix [Bt, Hkv, n1, D] fp64 key-block prefix sums, lo [Bt or 1, R] and hi [R] routed ranges,
    levels [R] each row's pyramid height. Returns routed blocks and their scores [Bt, Hkv, R, <= topk]
    (ascending, -1 / -inf padding), the candidates scored per row [Bt, Hkv, R], and, for ``target`` [R]
    (a block per row, -1 for none; a diagnostic), the rank [Bt, Hkv, R, levels.max()] of the target's
    ancestor among the row's candidates at each level (index = level, 0 = blocks; 0 = best, ties to the
    smaller node as the search breaks them), -1 where it was not a candidate (dropped at a coarser level);
    it was kept where 0 <= rank < :func:`level_widths`. None without ``target``. ``bounds``
    (:func:`search_bounds`): :func:`block_bounds` over at least the rows' ranges; nodes above the blocks
    (``cfg.node_score``) and the blocks (``cfg.leaf_score``) are then scored by their bounds where set so.

    All rows walk down together from the tallest pyramid; above its own top a row keeps every node
    overlapping its range, so each row's result is that of a search over its own pyramid."""
    bt, hkv, rows, _ = q_sum.shape
    dev = q_sum.device
    num_levels = int(levels.max())
    lo, hi = lo.view(-1, 1, rows, 1), hi.view(1, 1, rows, 1)  # broadcast over (Bt, Hkv, R, candidates)
    candidates = torch.zeros(bt, hkv, rows, dtype=torch.long, device=dev)
    ranks = None if target is None else torch.full((bt, hkv, rows, num_levels), -1, dtype=torch.long, device=dev)
    top_cover = cfg.branching ** (num_levels - 1)
    n_top = -(-(prefix.shape[2] - 1) // top_cover)
    node = torch.arange(n_top, device=dev).expand(bt, hkv, rows, n_top)  # (Bt, Hkv, R, n_top)
    score = _node_scores(q_sum, prefix, bounds, node, top_cover, cfg, lo, hi)
    for level in range(num_levels - 1, -1, -1):
        valid = _overlaps(node, cfg.branching**level, lo, hi)  # (Bt, Hkv, R, M)
        candidates += (valid & (level < levels).view(1, 1, rows, 1)).sum(-1)  # a row's own pyramid only
        node = torch.where(valid, node, -1)
        score = torch.where(valid, score, -math.inf)
        if ranks is not None:
            ancestor = torch.where(target >= 0, target // cfg.branching**level, -2).view(1, 1, rows, 1)
            ranks[..., level] = _rank_in_row(node, score, ancestor)
        if level == 0:
            break
        beams = _row_beams(level, levels, cfg)  # (R,)
        keep = min(int(beams.max()), node.shape[-1])
        parent, _ = _best(node, score, keep)  # (Bt, Hkv, R, keep), best first
        parent = torch.where(torch.arange(keep, device=dev) < beams.view(1, 1, rows, 1), parent, -1)
        parent = _ascending(parent)[0]  # ascending, so ties keep going to the smaller index
        child = parent.unsqueeze(-1) * cfg.branching + torch.arange(cfg.branching, device=dev)
        # (Bt, Hkv, R, keep, branching) -> (Bt, Hkv, R, keep * branching); padding stays -1
        node = torch.where(parent.unsqueeze(-1) >= 0, child, -1).flatten(-2)
        score = _node_scores(q_sum, prefix, bounds, node, cfg.branching ** (level - 1), cfg, lo, hi)
    best, best_scores = _ascending(*_best(node, score, min(cfg.topk_blocks, node.shape[-1])))
    return best, best_scores, candidates, ranks


def _rank_in_row(node: Tensor, score: Tensor, want: Tensor) -> Tensor:
    """Rank of node ``want`` [.., R, 1] among each row's valid candidates (node, score) [.., R, M] in the
    order :func:`_best` keeps them (score descending, ties to the smaller node), -1 where it is absent."""
    here = node == want
    s = torch.where(here, score, -math.inf).amax(-1, keepdim=True)
    ahead = (node >= 0) & ((score > s) | ((score == s) & (node < want)))
    return torch.where(here.any(-1), ahead.sum(-1), -1)


def level_widths(levels: Tensor, cfg: SSAConfig) -> Tensor:
    """Nodes each row keeps at each level, [R, levels.max()] (index = level): topk_blocks at the blocks,
    above them the beam (everything above the row's own pyramid): :func:`beam_search`'s ranks below
    these were kept."""
    widths = [torch.full_like(levels, cfg.topk_blocks)]
    widths += [_row_beams(level, levels, cfg) for level in range(1, int(levels.max()))]
    return torch.stack(widths, dim=-1)


def _union(routed: Tensor, cfg: SSAConfig) -> Tensor:
    """Sinks ∪ routed ∪ local window per row, ascending, -1 padding last: [Bt, Hkv, nb, S]."""
    bt, hkv, nb, _ = routed.shape
    block = torch.arange(nb, device=routed.device).view(1, 1, nb, 1)
    local_start = block - (cfg.local_blocks - 1)  # may be negative for the first blocks
    local = local_start + torch.arange(cfg.local_blocks, device=routed.device)  # (1, 1, nb, local_blocks)
    local = torch.where(local >= 0, local, -1)
    # A sink inside the local window is already there; keeping the others makes the three sets disjoint.
    sinks = torch.arange(cfg.sink_blocks, device=routed.device).view(1, 1, 1, -1)
    sinks = torch.where(sinks < local_start, sinks, -1)  # (1, 1, nb, sink_blocks)
    parts = [sinks.expand(bt, hkv, nb, -1), routed, local.expand(bt, hkv, nb, -1)]
    return _ascending(torch.cat(parts, dim=-1))[0]  # (Bt, Hkv, nb, S)


@torch.no_grad()
def select_by_scores(scores: Tensor, seq_len: int, cfg: SSAConfig, doc_ids: Tensor | None = None) -> Selection:
    """Route, per (batch, kv head, query block), the ``topk_blocks`` blocks of the routed range with the highest
    ``scores`` [Bt, Hkv, nb, nb] (query block x key block), exhaustively, no pyramid: ``router=oracle``, whose
    scores are the layer's dense attention mass (``distill.block_mass``). Ties: the lower block index wins."""
    bt, hkv, nb, _ = scores.shape
    ok = routable_mask(doc_ids, seq_len, cfg, scores.device)  # (Bt or 1, nb, nb)
    s = scores.float().masked_fill(~ok[:, None], -math.inf)
    k = min(cfg.topk_blocks, nb)
    # a stable descending sort: among equal scores the lower index comes first
    order = torch.sort(s, dim=-1, descending=True, stable=True).indices[..., :k]
    top = s.gather(-1, order)
    picked = torch.where(top > -math.inf, order, -1)
    routed = torch.full((bt, hkv, nb, cfg.topk_blocks), -1, dtype=torch.long, device=scores.device)
    routed_scores = torch.full(routed.shape, -math.inf, dtype=s.dtype, device=scores.device)
    ascending = torch.where(picked >= 0, picked, nb).argsort(-1)  # routed blocks ascending, padding last
    routed[..., :k] = picked.gather(-1, ascending)
    routed_scores[..., :k] = top.gather(-1, ascending)
    candidates = ok.sum(-1).expand(bt, hkv, nb)
    return Selection(_union(routed, cfg), routed, routed_scores, candidates)


@torch.no_grad()
def select_blocks(q: Tensor, k: Tensor, cfg: SSAConfig, doc_ids: Tensor | None = None) -> Selection:
    """Select the key blocks each (query block, kv head) attends to (no autograd; see :func:`routing_scores`).

    q: [Bt, Hq, T, D], k: [Bt, Hkv, T, D] with Hq a multiple of Hkv (GQA: one selection per group);
    doc_ids: optional [Bt, T] int64, nondecreasing per row (packed documents); routing never crosses
    back into an earlier document. Beam widths: ``cfg.beam_widths`` (coarsest level first) or, for a
    level whose nodes cover C blocks, 2 * ceil(topk_blocks / C). Nodes are scored from fp64 prefix sums
    over their blocks inside the query block's routed range only (divided by the nominal node size;
    each row searches the pyramid of its own prefix), so no key after the routed range, hence none after the query block, affects the choice.
    Fewer than ``topk_blocks`` blocks may be routed when partial nodes win the narrow coarse beams.
    """
    _check_inputs(q, k, cfg, doc_ids)
    d = q.shape[-1]
    q_sum = query_summary(q, k.shape[1], cfg.block_size) / math.sqrt(d)  # (Bt, Hkv, nb, D), score scale folded in
    leaf = functools.partial(block_minmax, k, cfg.block_size)  # made only under leaf_score=bound
    return _select(q_sum, lambda: _key_prefix(k, cfg.block_size), q.shape[2], cfg, doc_ids, leaf)


@torch.no_grad()
def select_blocks_pooled(route: PooledRoute, cfg: SSAConfig, doc_ids: Tensor | None = None) -> Selection:
    """:func:`select_blocks` given the block means themselves (a learned router that projects pooled hidden
    states, ``ssa_kernels/router.py``): the same selection as ``select_blocks`` on per-token tensors whose
    block means these are, up to rounding."""
    _check_pooled(route, cfg, doc_ids)
    d = route.q_mean.shape[-1]
    q_sum = route.q_mean.to(_accumulate_dtype(route.q_mean)) / math.sqrt(d)  # (Bt, Hkv, nb, D)

    def prefix() -> Tensor:
        counts = _block_token_counts(route.seq_len, cfg.block_size, q_sum.device, torch.float64)  # (nb,)
        return F.pad((route.k_mean.to(torch.float64) * counts[:, None]).cumsum(-2), (0, 0, 1, 0))

    return _select(q_sum, prefix, route.seq_len, cfg, doc_ids, lambda: (route.k_low, route.k_high))


_ROW_ELEMENTS = 2**26  # elements of one [Bt, Hkv, rows, candidates] tensor of a search chunk (fp64: 512 MiB)


def _max_candidates(num_blocks: int, height: int, cfg: SSAConfig) -> int:
    """The most nodes a row of pyramid height ``height`` within the first ``num_blocks`` blocks scores at
    one level: its top-level nodes, or a level's kept nodes times branching."""
    n = -(-num_blocks // cfg.branching ** (height - 1))
    most = n
    for level in range(height - 1, 0, -1):
        n = min(beam_width(level, height, cfg), n) * cfg.branching
        most = max(most, n)
    return most


def _select(q_sum: Tensor, key_prefix, seq_len: int, cfg: SSAConfig, doc_ids: Tensor | None, leaf=None) -> Selection:
    """The search of :func:`select_blocks` from scaled query summaries [Bt, Hkv, nb, D] and a callable
    giving the fp64 key-block prefix sums [Bt, Hkv, nb + 1, D] (made only when something is routed); ``leaf``:
    a callable giving the blocks' token-key (min, max) [Bt, Hkv, nb, D] (read only under leaf_score=bound)."""
    bt, hkv, nb, _ = q_sum.shape
    dev = q_sum.device
    topk = cfg.topk_blocks
    routed = torch.full((bt, hkv, nb, topk), -1, dtype=torch.long, device=dev)
    routed_scores = torch.full((bt, hkv, nb, topk), -math.inf, dtype=q_sum.dtype, device=dev)
    candidates = torch.zeros(bt, hkv, nb, dtype=torch.long, device=dev)
    if topk > 0:
        lo, hi = routed_bounds(doc_ids, seq_len, cfg, dev)
        prefix = key_prefix()
        levels = row_levels(nb, cfg, dev)
        tables = search_bounds(prefix, cfg, leaf)
        # Rows of equal pyramid height are contiguous (height grows with i): search each run on its own,
        # so no run pays the wide "keep everything above my top" beams of the shallower early rows.
        bounds = torch.cumsum(torch.bincount(levels)[levels.min() :], 0).tolist()
        for r0, r1 in zip([0, *bounds[:-1]], bounds):
            if r0 == r1:
                continue
            # ... and in chunks of rows, so that wide beams (beam_full_span at 4M: 8,192 candidates a row)
            # keep each [Bt, Hkv, rows, candidates] tensor of the search near _ROW_ELEMENTS elements
            step = max(1, _ROW_ELEMENTS // (bt * hkv * _max_candidates(r1, int(levels[r0]), cfg)))
            for c0 in range(r0, r1, step):
                c1 = min(r1, c0 + step)
                best, best_scores, cand, _ = beam_search(
                    q_sum[:, :, c0:c1], prefix[:, :, : c1 + 1], lo[:, c0:c1], hi[c0:c1], levels[c0:c1], cfg,
                    bounds=tables,
                )  # fmt: skip
                routed[:, :, c0:c1, : best.shape[-1]] = best
                routed_scores[:, :, c0:c1, : best.shape[-1]] = best_scores
                candidates[:, :, c0:c1] = cand
    return Selection(_union(routed, cfg), routed, routed_scores, candidates)


def routing_scores(q: Tensor, k: Tensor, routed: Tensor, cfg: SSAConfig, doc_ids: Tensor | None = None) -> Tensor:
    """Differentiable scores of given routed blocks: query summary . level-0 key summary / sqrt(D).

    q: [Bt, Hq, T, D], k: [Bt, Hkv, T, D], routed: [Bt, Hkv, nb, R] int64 (e.g. ``Selection.routed``).
    Returns [Bt, Hkv, nb, R] in fp32 (fp64 for fp64 input) with autograd to q and k; padding (-1) and
    entries outside the routed range of their query block (see :func:`routed_bounds`; doc_ids as given
    to :func:`select_blocks`) are -inf with zero gradient. Equals ``Selection.routed_scores`` for
    ``Selection.routed``. Memory is O(nb * R * D), never nb x nb.
    """
    _check_inputs(q, k, cfg, doc_ids)
    bt, hq, seq_len, d = q.shape
    q_mean = query_summary(q, k.shape[1], cfg.block_size)  # (Bt, Hkv, nb, D)
    keys = block_means(k, cfg.block_size)  # (Bt, Hkv, nb, D)
    return _routed_scores(q_mean, keys, routed, seq_len, cfg, doc_ids)


def routing_scores_pooled(route: PooledRoute, routed: Tensor, cfg: SSAConfig, doc_ids: Tensor | None = None) -> Tensor:
    """:func:`routing_scores` from block means (``PooledRoute``); autograd reaches the means, O(nb) sized."""
    _check_pooled(route, cfg, doc_ids)
    acc = _accumulate_dtype(route.q_mean)
    return _routed_scores(route.q_mean.to(acc), route.k_mean.to(acc), routed, route.seq_len, cfg, doc_ids)


def _routed_scores(q_mean: Tensor, keys: Tensor, routed: Tensor, seq_len: int, cfg: SSAConfig, doc_ids) -> Tensor:
    bt, hkv, nb, d = keys.shape
    if routed.shape[:3] != (bt, hkv, nb):
        raise ValueError(f"routed must be [Bt, Hkv, nb, R] with (Bt, Hkv, nb) = {(bt, hkv, nb)}")
    lo, hi = routed_bounds(doc_ids, seq_len, cfg, keys.device)
    valid = (routed >= lo.view(-1, 1, nb, 1)) & (routed < hi.view(1, 1, nb, 1))  # (Bt, Hkv, nb, R)
    return torch.where(valid, _RoutedScores.apply(q_mean / math.sqrt(d), keys, routed), -math.inf)
