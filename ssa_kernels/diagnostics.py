"""SSA router diagnostics: what the selector picks, and how much attention it lets through.

- :func:`selection_stats` (cheap, O(nb * S + T), no q/k needed): share of causal token pairs attended,
  mean / max distance of the selected blocks, share of them beyond the local window.
- :func:`far_mass`: share of the sparse attention probability (the probabilities ``sparse_attention``
  computes, recomputed for a few sampled query blocks) on blocks at least ``far_blocks`` blocks back.
- :func:`dense_recall`: for sampled query blocks, the share of DENSE causal attention mass that falls in
  the selected blocks, and the same share for an oracle that routes the same number of blocks to the
  blocks of largest dense mass (the ceiling of any router with this budget).
- :func:`router_recall`: runs a converted HF model on a batch and reports the three per layer and averaged.

Hooking in without touching ``ssa_attention``: :class:`SSARecorder` is a context manager that
re-registers HF's ``"ssa"`` attention function with a wrapper (``AttentionInterface.register``) and
restores the previous one on exit. The wrapper calls the original unchanged, then recomputes the
selection from the same q, k (``select_blocks`` is deterministic and runs under the same autocast, so
it is the selection the layer used) and hands one :class:`SSACall` per layer to a callback; only the
callback's (small) result is kept, never q or k. :class:`DecodeRouteRecorder` does the same for generation:
the blocks each token that predicts a new one attended (per-token rule), e.g. to ask whether a needle was
routed (``train.eval`` ``needle_routing``).

Shapes: q [Bt, Hq, T, D], k [Bt, Hkv, T, D] (GQA: query heads h*G .. h*G+G-1 use kv head h),
indices [Bt, Hkv, nb, S] int64 ascending, -1 padded, nb = ceil(T / block_size).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import AttentionInterface

from ssa_kernels.config import SSAConfig
from ssa_kernels.distill import dense_block_mass, doc_starts
from ssa_kernels.hf import doc_ids_of, route_of, ssa_config_of
from ssa_kernels.selector import Selection, select_blocks
from ssa_kernels.selector.reference import _accumulate_dtype

__all__ = [
    "DecodeRouteRecorder",
    "SSACall",
    "SSARecorder",
    "blocks_listed",
    "dense_recall",
    "distance_bin_edges",
    "distance_histogram",
    "far_mass",
    "layer_router_stats",
    "router_metrics",
    "router_recall",
    "router_stats_recorder",
    "sample_query_blocks",
    "selection_stats",
    "share_at_least",
]


# --- cheap statistics of a selection --------------------------------------------------------------


def _doc_starts(doc_ids: Tensor | None, bt: int, seq_len: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """First and one-past-last position of each token's document: two [Bt, T] int64 tensors.
    Documents are contiguous runs of equal (nondecreasing) ids; no doc_ids is one document."""
    if doc_ids is None:
        return doc_starts(None, bt, seq_len, device), torch.full(
            (bt, seq_len), seq_len, dtype=torch.long, device=device
        )
    doc_ids = doc_ids.to(device=device, dtype=torch.long).contiguous()
    return doc_starts(doc_ids, bt, seq_len, device), torch.searchsorted(doc_ids, doc_ids, right=True)


def _attended_pairs(indices: Tensor, block_size: int, seq_len: int, doc_ids: Tensor | None) -> tuple[Tensor, Tensor]:
    """(token pairs the selection attends, causal within-document token pairs), each summed over the
    batch and (for the first) the kv heads, as fp64 0-dim tensors.

    A pair (t, s) counts when s's block is listed for t's block, s <= t and both are in one document
    (the mask of ``sparse_attention``). For a listed block j < i only the document of block i's first
    token can reach back into j (a document reaching j from i covers i's start), so block pair (i, j)
    contributes q_i * k_ij: q_i = block i's tokens in that document, k_ij = block j's tokens in it.
    The diagonal block's pairs are summed per token in O(T). Cost O(Bt * Hkv * nb * S + Bt * T).
    """
    bt, hkv, nb, _ = indices.shape
    B, dev = block_size, indices.device
    start, end = _doc_starts(doc_ids, bt, seq_len, dev)  # (Bt, T)
    pos = torch.arange(seq_len, device=dev)
    # Diagonal block: token t sees t - max(block start, doc start) + 1 keys of its own block.
    block_start = pos // B * B  # (T,)
    diag_tok = pos - torch.maximum(start, block_start) + 1  # (Bt, T)
    diag = torch.zeros(bt, nb, dtype=torch.float64, device=dev).index_add_(1, pos // B, diag_tok.double())  # (Bt, nb)
    causal = (pos - start + 1).double().sum()  # dense causal pairs within documents, all rows

    first = torch.arange(nb, device=dev) * B  # (nb,) first token of each query block
    d_start, d_end = start[:, first], end[:, first]  # (Bt, nb): the document of each block's first token
    q_rows = (torch.minimum(d_end, (first + B).clamp(max=seq_len)) - first).double()  # (Bt, nb)
    j = indices.clamp_min(0)  # (Bt, Hkv, nb, S)
    k_keys = (j * B + B - torch.maximum(j * B, d_start[:, None, :, None])).clamp(0, B)  # (Bt, Hkv, nb, S)
    i = torch.arange(nb, device=dev).view(1, 1, nb, 1)
    earlier = (indices >= 0) & (indices < i)  # listed causal off-diagonal blocks
    off = torch.where(earlier, k_keys.double(), 0.0).sum(-1) * q_rows[:, None]  # (Bt, Hkv, nb)
    on = (indices == i).any(-1).double() * diag[:, None]  # (Bt, Hkv, nb): the diagonal block, if listed
    return (off + on).sum(), causal * hkv


def _distance_stats(indices: Tensor, block_size: int, prefix: str = "") -> dict[str, Tensor]:
    """Mean and max of (query block start - selected block start) in tokens over the valid entries."""
    i = torch.arange(indices.shape[2], device=indices.device).view(1, 1, -1, 1)
    valid = indices >= 0
    dist = torch.where(valid, (i - indices) * block_size, 0).double()  # (Bt, Hkv, nb, S)
    count = valid.sum().clamp_min(1)
    return {f"{prefix}mean_distance": dist.sum() / count, f"{prefix}max_distance": dist.max()}


def selection_stats(
    indices: Tensor,
    block_size: int,
    seq_len: int,
    doc_ids: Tensor | None = None,
    local_blocks: int = 1,
    routed: Tensor | None = None,
) -> dict[str, Tensor]:
    """Statistics of one layer's selection; fp64 0-dim tensors (no host sync: ``.item()`` when logging).

    indices [Bt, Hkv, nb, S] (``Selection.indices``); doc_ids [Bt, T] as given to the selector;
    local_blocks = ``SSAConfig.local_blocks``; routed [Bt, Hkv, nb, topk] (``Selection.routed``), optional.

    - ``attended_share``: token pairs attended / causal token pairs, i.e. T(T+1)/2 per row and kv head
      (with documents: the within-document causal pairs, what dense attention would attend). 1.0 when
      every causal block is listed.
    - ``mean_distance``, ``max_distance``: query block start - selected block start, in tokens, over
      all listed blocks (sinks, routed, local window, diagonal included: distance 0).
    - ``routed_mean_distance``, ``routed_max_distance`` (when ``routed`` is given): the same over the
      routed blocks only (0 when nothing was routed).
    - ``far_share``: share of listed blocks at least ``local_blocks`` blocks back (outside the local window).
    - ``blocks_per_query``: listed blocks per (query block, kv head).
    """
    nb = indices.shape[2]
    if nb != -(-seq_len // block_size):
        raise ValueError(
            f"indices has nb={nb} query blocks; seq_len={seq_len}, block_size={block_size} need {-(-seq_len // block_size)}"
        )
    attended, causal = _attended_pairs(indices, block_size, seq_len, doc_ids)
    valid = indices >= 0
    i = torch.arange(nb, device=indices.device).view(1, 1, nb, 1)
    n_listed = valid.sum().double()
    stats = {
        "attended_share": attended / causal,
        **_distance_stats(indices, block_size),
        "far_share": (valid & (i - indices >= local_blocks)).sum().double() / n_listed.clamp_min(1),
        "blocks_per_query": n_listed / (indices.numel() // indices.shape[-1]),
    }
    if routed is not None:
        stats.update(_distance_stats(routed, block_size, prefix="routed_"))
    return {k: v.double() for k, v in stats.items()}


# --- statistics of sampled query blocks (need q and k) --------------------------------------------


def sample_query_blocks(nb: int, num: int, seed: int) -> list[int]:
    """``min(num, nb)`` distinct query blocks, uniform over [0, nb), ascending; the same for a given seed."""
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(nb, generator=g)[:num].tolist())


def _group_rows(q: Tensor, hkv: int, t0: int, t1: int) -> Tensor:
    """Query rows [t0, t1) of all heads, fp32, grouped by kv head: [Bt, Hq, T, D] -> [Bt, Hkv, G*m, D]."""
    bt, hq, _, d = q.shape
    return q[:, :, t0:t1].float().reshape(bt, hkv, (hq // hkv) * (t1 - t0), d)  # (Bt, Hkv, G*m, D), row g*m + r


def _probs(logits: Tensor, allowed: Tensor) -> Tensor:
    """Softmax over the allowed keys (every row has one: the query itself); 0 elsewhere."""
    return torch.softmax(logits.masked_fill(~allowed, -math.inf), dim=-1)


@torch.no_grad()
def far_mass(
    q: Tensor,
    k: Tensor,
    indices: Tensor,
    block_size: int,
    query_blocks: list[int],
    far_blocks: int,
    doc_ids: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """Share of sparse attention probability on listed blocks at least ``far_blocks`` blocks back
    (``SSAConfig.local_blocks``: outside the local window), mean over the sampled query blocks and,
    within each, over its real rows, query heads and batch rows. fp64 0-dim tensor.

    The probabilities are those of ``sparse_attention`` (its routing bias is zero in the forward
    pass), recomputed for the sampled blocks from their gathered keys: [Bt, Hkv, G*B, S*B] per block.
    """
    bt, hkv, seq_len, d = k.shape
    B, dev = block_size, k.device
    scale = d**-0.5 if scale is None else scale
    offs = torch.arange(B, device=dev)
    shares = []
    for i in query_blocks:
        t0, t1 = i * B, min(i * B + B, seq_len)
        idx = indices[:, :, i]  # (Bt, Hkv, S)
        kpos = (idx.clamp_min(0)[..., None] * B + offs).flatten(-2)  # (Bt, Hkv, S*B)
        listed = (idx >= 0)[..., None].expand(*idx.shape, B).flatten(-2) & (kpos < seq_len)
        kpos = kpos.clamp_max(seq_len - 1)
        kg = k.gather(2, kpos[..., None].expand(-1, -1, -1, d)).float()  # (Bt, Hkv, S*B, D)
        qg = _group_rows(q, hkv, t0, t1)  # (Bt, Hkv, G*m, D)
        qpos = torch.arange(t0, t1, device=dev).repeat(qg.shape[2] // (t1 - t0))  # (G*m,)
        allowed = listed[:, :, None, :] & (kpos[:, :, None, :] <= qpos[:, None])  # (Bt, Hkv, G*m, S*B)
        if doc_ids is not None:
            doc_k = doc_ids.gather(1, kpos.flatten(1)).view_as(kpos)  # (Bt, Hkv, S*B)
            allowed = allowed & (doc_k[:, :, None, :] == doc_ids[:, qpos][:, None, :, None])
        p = _probs((qg @ kg.transpose(-1, -2)) * scale, allowed)  # (Bt, Hkv, G*m, S*B)
        far = (idx >= 0) & (i - idx >= far_blocks)  # (Bt, Hkv, S)
        far = far[..., None].expand(*idx.shape, B).flatten(-2)  # (Bt, Hkv, S*B)
        shares.append((p * far[:, :, None, :]).sum(-1).double().mean())
    return torch.stack(shares).mean() if shares else torch.zeros((), dtype=torch.float64, device=dev)


def _block_mask(blocks: Tensor, nb: int) -> Tensor:
    """[..., S] block ids, -1 padded -> [..., nb] bool membership."""
    slot = torch.where(blocks >= 0, blocks, nb)  # padding goes to a spare column, dropped below
    mask = torch.zeros(*blocks.shape[:-1], nb + 1, dtype=torch.bool, device=blocks.device)
    return mask.scatter_(-1, slot, True)[..., :nb]


@torch.no_grad()
def dense_recall(
    q: Tensor,
    k: Tensor,
    sel: Selection,
    cfg: SSAConfig,
    query_blocks: list[int],
    doc_ids: Tensor | None = None,
    scale: float | None = None,
) -> dict[str, Tensor]:
    """Share of DENSE causal attention mass inside the selected blocks, for sampled query blocks.

    Per sampled query block i the dense probabilities of its rows over all keys are summed per key block
    and averaged over the block's real rows and the G query heads sharing the selection
    (:func:`~ssa_kernels.distill.dense_block_mass`: O(sampled * T), never T x T): mass [Bt, Hkv, nb].

    - ``recall``: mass of the listed blocks (sinks, routed, local window).
    - ``oracle_recall``: mass of the same fixed blocks (listed but not routed) plus the
      ``cfg.topk_blocks`` causal blocks of largest mass among the rest: the best any router with this
      budget can do, so ``recall <= oracle_recall <= 1`` for every (batch row, kv head, query block).

    Both are means over (batch row, kv head, sampled query block); fp64 0-dim tensors.
    """
    nb, dev = sel.indices.shape[2], k.device
    blocks = torch.tensor(query_blocks, dtype=torch.long, device=dev)
    # one query block at a time ([Bt, Hkv, G*B, T]): diagnostics run beside training at full length; fp32 logits
    mass = dense_block_mass(q, k, blocks, cfg.block_size, doc_ids, scale, max_elements=0, matmul_dtype=torch.float32)
    mass = mass.double()  # (Bt, Hkv, nq, nb)
    recall, oracle = [], []
    for n, i in enumerate(query_blocks):
        m = mass[:, :, n]  # (Bt, Hkv, nb)
        listed = _block_mask(sel.indices[:, :, i], nb)  # (Bt, Hkv, nb)
        fixed = listed & ~_block_mask(sel.routed[:, :, i], nb)
        causal = torch.arange(nb, device=dev) <= i
        rest = torch.where(~fixed & causal, m, 0.0)  # masses >= 0: padding picks add nothing
        best = rest.topk(min(cfg.topk_blocks, nb), dim=-1).values.sum(-1) if cfg.topk_blocks else 0.0
        recall.append(torch.where(listed, m, 0.0).sum(-1))  # (Bt, Hkv)
        oracle.append(torch.where(fixed, m, 0.0).sum(-1) + best)
    return {"recall": torch.stack(recall).mean(), "oracle_recall": torch.stack(oracle).mean()}


# --- recording the selection of every SSA layer during a forward ------------------------------------


@dataclass
class SSACall:
    """One SSA attention call as the recorder sees it (tensors as the layer got them, not copied)."""

    layer_idx: int
    q: Tensor  # [Bt, Hq, T, D] post-RoPE
    k: Tensor  # [Bt, Hkv, T, D]
    selection: Selection
    cfg: SSAConfig
    doc_ids: Tensor | None  # [Bt, T]
    scale: float | None


class SSARecorder:
    """``with SSARecorder(fn) as rec: model(...)``: every SSA attention call (prefill / training
    forward; decode steps pass through) also runs ``fn(call: SSACall)`` under no_grad with autocast off,
    and ``rec.records[layer_idx]`` keeps its result (a later call for the same layer replaces it).

    On entry the HF ``"ssa"`` attention function is re-registered with a wrapper around the current
    one; on exit the current one is registered again, so the model runs exactly as before.
    Recording costs one extra ``select_blocks`` per layer plus whatever ``fn`` does.
    """

    def __init__(self, fn: Callable[[SSACall], Any]):
        self.fn = fn
        self.records: dict[int, Any] = {}
        self._original: Callable | None = None

    def __enter__(self) -> SSARecorder:
        if self._original is not None:
            raise RuntimeError("this SSARecorder is already active")
        self._original = AttentionInterface()["ssa"]  # a fresh instance reads the global registry
        AttentionInterface.register("ssa", self._wrapped(self._original))
        return self

    def __exit__(self, *exc) -> None:
        AttentionInterface.register("ssa", self._original)
        self._original = None

    def _wrapped(self, original: Callable) -> Callable:
        def ssa_recorded(module, query, key, value, attention_mask, *args, **kwargs):
            result = original(module, query, key, value, attention_mask, *args, **kwargs)
            if query.shape[2] == key.shape[2]:  # a decode step (cached keys) is not recorded
                self._record(module, query, key, kwargs)
            return result

        return ssa_recorded

    def _record(self, module, query: Tensor, key: Tensor, kwargs: dict) -> None:
        # The same config and documents as ssa_kernels.hf.ssa_attention_forward derives.
        cfg = ssa_config_of(module.config)
        rule = (getattr(module.config, "ssa", None) or {}).get("rule", "block")
        if rule != "block":  # per-token selection (the decode rule): select_blocks would not be what ran
            raise NotImplementedError(f"SSA router diagnostics cover the per-block selection, not rule={rule!r}")
        if cfg.router == "oracle":  # the selection by dense mass is not select_blocks' either
            raise NotImplementedError("SSA router diagnostics record the pyramid's selection, not router=oracle")
        doc_ids = doc_ids_of(kwargs.get("position_ids"), query.shape[0])
        layer = getattr(module, "layer_idx", None)
        layer = len(self.records) if layer is None else layer
        with torch.no_grad():
            route = route_of(module, cfg, kwargs)  # a learned router's (route_q, route_k), or None: q and k
            rq, rk = route if route is not None else (query, key)
            sel = select_blocks(rq.detach(), rk.detach(), cfg, doc_ids)  # under the layer's autocast, as used
            with torch.autocast(query.device.type, enabled=False):
                call = SSACall(layer, query.detach(), key.detach(), sel, cfg, doc_ids, kwargs.get("scaling"))
                self.records[layer] = self.fn(call)


class DecodeRouteRecorder(SSARecorder):
    """``with DecodeRouteRecorder(fn) as rec: model.generate(...)``: the blocks attended by each token that
    predicts a new one. ``rec.records[t][layer] = fn(layer, indices)``, indices [Bt, Hkv, 1, S] under the
    per-token rule (:meth:`~ssa_kernels.decode.DecodeState.route`, what a decode step attends), t the token's
    position: the prompt's last token (the prefill; under the block rule its last query block selects the same
    blocks) predicts the first new token, each decode step the next. Needs the SSA decode states on the cache
    (``generate`` with ``use_cache``); costs one more per-token selection per layer and token.

    With ``trace_block`` (a key block), ``fn(layer, indices, trace)`` also gets where that token's search kept
    or dropped the block (:meth:`~ssa_kernels.decode.DecodeState.trace`, one more search)."""

    def __init__(self, fn: Callable[..., Any], trace_block: int | None = None):
        super().__init__(fn)  # (called with (layer, indices[, trace]), not an SSACall)
        self.trace_block = trace_block

    def _wrapped(self, original: Callable) -> Callable:
        def ssa_recorded(module, query, key, value, attention_mask, *args, **kwargs):
            result = original(module, query, key, value, attention_mask, *args, **kwargs)
            state = (kwargs.get("ssa_decode_states") or {}).get(module.layer_idx)
            if state is not None:  # a cached prefill or a decode step: the state holds its last token
                cfg, dtype = ssa_config_of(module.config), _accumulate_dtype(query)
                extra = () if self.trace_block is None else (state.trace(cfg, self.trace_block, dtype),)
                record = self.fn(module.layer_idx, state.route(cfg, dtype), *extra)
                self.records.setdefault(state.length - 1, {})[module.layer_idx] = record
            return result

        return ssa_recorded


def blocks_listed(indices: Tensor, blocks: list[int]) -> Tensor:
    """[Bt, Hkv] bool: whether every block in ``blocks`` is among one query row's ``indices`` [Bt, Hkv, 1, S]."""
    want = torch.tensor(blocks, device=indices.device).view(1, 1, -1, 1)
    return (indices[:, :, 0].unsqueeze(2) == want).any(-1).all(-1)


# --- per-layer statistics for training logs, and the recall tool ------------------------------------


def layer_router_stats(call: SSACall, num_query_blocks: int = 0, seed: int = 0) -> dict[str, Tensor]:
    """:func:`selection_stats` of the layer, plus :func:`far_mass` and :func:`dense_recall` (recall and
    oracle recall) over ``num_query_blocks`` sampled query blocks (0: skipped). No host sync."""
    cfg, sel, seq_len = call.cfg, call.selection, call.q.shape[2]
    stats = selection_stats(sel.indices, cfg.block_size, seq_len, call.doc_ids, cfg.local_blocks, sel.routed)
    if num_query_blocks > 0:
        blocks = sample_query_blocks(sel.indices.shape[2], num_query_blocks, seed)
        stats["far_mass"] = far_mass(
            call.q, call.k, sel.indices, cfg.block_size, blocks, cfg.local_blocks, call.doc_ids, call.scale
        )
        stats.update(dense_recall(call.q, call.k, sel, cfg, blocks, call.doc_ids, call.scale))
    return stats


def router_stats_recorder(num_query_blocks: int = 0, seed: int = 0) -> SSARecorder:
    """A recorder collecting :func:`layer_router_stats` per layer (for the trainer's log step)."""
    return SSARecorder(lambda call: layer_router_stats(call, num_query_blocks, seed))


def router_metrics(records: dict[int, dict[str, Tensor]], prefix: str = "router") -> dict[str, float]:
    """Per-layer stats -> flat floats ``{prefix}/layer{i}/{stat}`` plus ``{prefix}/{stat}`` over layers
    (the max for ``max_*`` stats, else the mean). One host sync for everything."""
    if not records:
        return {}
    layers = sorted(records)
    names = list(records[layers[0]])
    table = torch.stack([torch.stack([records[i][n].double() for n in names]) for i in layers])  # (layers, stats)
    overall = torch.where(
        torch.tensor([n.startswith("max_") or "_max_" in n for n in names], device=table.device),
        table.max(0).values,
        table.mean(0),
    )
    rows, overall = table.tolist(), overall.tolist()
    out = {f"{prefix}/{n}": v for n, v in zip(names, overall)}
    for i, row in zip(layers, rows):
        out.update({f"{prefix}/layer{i}/{n}": v for n, v in zip(names, row)})
    return out


@torch.no_grad()
def router_recall(
    model: torch.nn.Module, batch: dict[str, Tensor], num_query_blocks: int = 16, seed: int = 0, prefix: str = "router"
) -> dict[str, float]:
    """Run an SSA-converted HF causal LM on ``batch`` (``input_ids`` [Bt, T], optional ``position_ids``
    [Bt, T] whose restarts mark packed documents) and measure, for ``num_query_blocks`` query blocks
    sampled uniformly with ``seed`` (the same blocks in every layer):

    ``recall`` and ``oracle_recall`` (:func:`dense_recall`) and ``far_mass`` (:func:`far_mass`, beyond
    the local window), as ``{prefix}/layer{i}/{stat}`` and ``{prefix}/{stat}`` (mean over layers).

    Only the decoder runs (no vocabulary logits); memory beyond the forward is O(Bt * Hq * B * T).
    """

    def measure(call: SSACall) -> dict[str, Tensor]:
        cfg, sel = call.cfg, call.selection
        blocks = sample_query_blocks(sel.indices.shape[2], num_query_blocks, seed)
        stats = dense_recall(call.q, call.k, sel, cfg, blocks, call.doc_ids, call.scale)
        stats["far_mass"] = far_mass(
            call.q, call.k, sel.indices, cfg.block_size, blocks, cfg.local_blocks, call.doc_ids, call.scale
        )
        return stats

    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "position_ids")}
    with SSARecorder(measure) as rec:
        decoder(**inputs, use_cache=False)
    if not rec.records:
        raise ValueError("router_recall: no SSA attention ran; convert the model with ssa_kernels.hf.convert_to_ssa")
    return router_metrics(rec.records, prefix)


# --- reach: how far back the selected blocks lie ---------------------------------------------------


def distance_bin_edges(seq_len: int, block_size: int) -> list[int]:
    """Upper edges, in blocks, of log2 bins of (query block - selected block): ``[0, 2, 4, 8, ...]``,
    the last one >= nb - 1 (the largest causal distance). Bin 0 is the diagonal (distance 0), bin 1
    holds 1-2 blocks back, bin k >= 2 holds (2^(k-1), 2^k] blocks back."""
    nb = -(-seq_len // block_size)
    edges = [0]
    while edges[-1] < nb - 1:
        edges.append(max(2, 2 * edges[-1]))
    return edges


def distance_histogram(indices: Tensor, edges: list[int]) -> Tensor:
    """Counts of the valid entries of ``indices`` [..., nb, S] (-1 padded) per distance bin; distance
    = query block - listed block, in blocks; ``edges``: :func:`distance_bin_edges`. int64 [len(edges)],
    summing to ``(indices >= 0).sum()`` for causal selections. No host sync."""
    nb = indices.shape[-2]
    i = torch.arange(nb, device=indices.device).view(nb, 1)
    valid = indices >= 0
    dist = (i - indices)[valid]  # (entries,)
    upper = torch.tensor(edges, device=indices.device, dtype=dist.dtype)
    bins = torch.bucketize(dist, upper)  # edges[k-1] < d <= edges[k] -> k
    return torch.bincount(bins, minlength=len(edges))[: len(edges)]


def share_at_least(indices: Tensor, block_size: int, min_tokens: float) -> Tensor:
    """Share of the valid entries of ``indices`` [..., nb, S] at least ``min_tokens`` back (query block
    start - listed block start, in tokens); 0 when there are none. fp64 0-dim tensor, no host sync."""
    nb = indices.shape[-2]
    i = torch.arange(nb, device=indices.device).view(nb, 1)
    valid = indices >= 0
    far = valid & ((i - indices) * block_size >= min_tokens)
    return far.sum().double() / valid.sum().clamp_min(1).double()
