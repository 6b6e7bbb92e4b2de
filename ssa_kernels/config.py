"""SSA hyper-parameters (``conf/attention/ssa.yaml``).

Per (query block, kv head) the attended set is: ``sink_blocks`` first blocks + the blocks of the
local window (the diagonal block and the ``local_window // block_size - 1`` blocks before it) +
``topk_blocks`` blocks chosen by content through a coarse-to-fine beam search over a pyramid of
pooled key summaries (each level pools ``branching`` children). The default budget is
64 + 1024 + 112 x 64 = 8,256 tokens per query.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

BACKENDS = ("auto", "reference", "triton")
ROUTINGS = ("straight_through", "distill", "none")
DISTILL_TARGETS = ("attended", "true_distance")
DISTILL_ROWS = ("mean", "max")
DISTILL_SCORES = ("mean", "bound")
NODE_SCORES = ("mean", "bound")
LEAF_SCORES = ("mean", "bound")
ROUTERS = ("learned", "attention", "oracle")


def resolve_backend(backend: str, device: torch.device) -> str:
    """ "auto" -> "triton" for CUDA tensors, "reference" elsewhere; others as given."""
    if backend not in BACKENDS:
        raise ValueError(f"attention.backend={backend!r}: use one of {BACKENDS}")
    if backend == "auto":
        return "triton" if device.type == "cuda" else "reference"
    return backend


@dataclass
class SSAConfig:
    block_size: int = 64  # tokens per block
    branching: int = 8  # children pooled into one node of the next pyramid level
    topk_blocks: int = 112  # routed blocks per (query block, kv head)
    local_window: int = 1024  # tokens, a multiple of block_size; includes the diagonal block
    sink_blocks: int = 1  # always-attended first blocks
    # Nodes kept per level on the way down, coarsest level first; empty: 2 x the number of nodes
    # that can hold topk_blocks leaves at that level (so the last beam offers 2 x topk candidates),
    # but at least beam_min.
    beam_widths: list[int] = field(default_factory=list)
    # The fewest nodes a default beam keeps at any level. The capacity rule above assumes the routed
    # blocks cluster under a few nodes; scattered evidence (one needle block among many) sits under
    # one node whose mean-pooled summary is diluted by its other children, more so the coarser the
    # level, i.e. the longer the sequence. Narrow coarse beams then drop it: docs/ssa.md,
    # "Beam width and length generalisation".
    beam_min: int = 16
    # Levels whose nodes span at least this many tokens (block_size x branching^level) keep every node
    # they score, overriding the widths above; 0: off. Where one node's mean summary dilutes a needle
    # below what the router separates, pruning loses it: a 1M row's 256 level-2 nodes (4,096 tokens each)
    # pruned to 64 lost the needle in 0 of 12 answers right; keeping them all read 11 of 12 (the same
    # recipe, docs/functional_context.md, tenth session). Cost: the level below then scores branching x
    # n / beam_full_span nodes per query block, so selection grows as n^2 / beam_full_span (at 1M with
    # 4,096: 2,048 level-1 candidates per query block, against 512 with beams of 64).
    beam_full_span: int = 0
    top_nodes: int = 64  # the coarsest level has at most this many nodes (all are scored)
    # How a node above the blocks is scored. "mean" (default): query summary . the node's mean key, so one needle
    # block among a node's 4,096 others is diluted 1:4,096 and narrow coarse beams drop it (beam_full_span, the
    # wide beam_widths of the recipes). "bound": an upper bound of the node's best block score, sum over dims
    # of max(q_d * min_d, q_d * max_d) with min / max over the node's block means (Quest's page bound, lifted
    # to the pyramid): a node ranks as high as its best block could, so a needle survives beams of a few nodes
    # (the CPU toy: beams of one node per level 0.60 -> 0.98 at 16x its training length, docs/ssa.md). Blocks
    # are scored as before; no weights change, so a checkpoint trained with "mean" can be evaluated with
    # "bound". Costs O(n log n) memory per layer call for the min / max tables (both selectors and DecodeState;
    # fast decoding refuses it).
    node_score: str = "mean"
    # How a block (the pyramid's leaf) is scored. "mean" (default): query summary . the block's mean key. "bound":
    # sum over dims of max(q_d * min_d, q_d * max_d) with min / max over the block's own token keys, an upper bound
    # of its best token's score, so one distinctive token is not averaged away among the block's others (fc43: the
    # single needle's block in the top 16 of a 4K row in 0.97 of (layer, kv head) pairs against the mean's 0.81,
    # scripts/needle_rank_probe.py). With node_score=bound the nodes above are bounded over the same token min /
    # max, so a node's bound stays >= each of its blocks' scores. Selection only: the routing gradients
    # (straight-through, distillation) still score block means, so a checkpoint trained with "mean" evaluates with
    # "bound" as is. Needs the per-token keys' block min / max (the learned router projects every token for it);
    # both selectors and DecodeState, on one process (fast decoding refuses it).
    leaf_score: str = "mean"
    # How the routing scores learn: "straight_through" adds (score - score.detach()) to the logits of
    # each routed block, zero in the forward pass (output exactly as without it) but giving every
    # routed score the gradient of its block's total attention logit; "distill" trains the learned router
    # toward the layer's dense attention mass on every routable block (``ssa_kernels/distill.py``: it sees
    # blocks never routed, at the cost of dense probabilities for the sampled query blocks); "none"
    # switches learning off.
    routing: str = "straight_through"
    distill_blocks: int = 16  # routing=distill: query blocks per call whose dense mass is the target; 0 = all
    # routing=distill: the loss's scale in the backward. Adam makes the router's step size independent of
    # it; kept small so that the router's gradient does not dominate the global norm used for clipping.
    # The loss is per layer call, not normalised like the LM loss: it adds up over gradient-accumulation
    # micro-batches and is averaged over data-parallel / Ulysses ranks (each rank's over its own heads), so
    # unlike the LM gradient it is not step-for-step equal across those layouts.
    distill_weight: float = 0.01
    # routing=distill with far_distance > 0: which dense attention the router is distilled toward. "true_distance"
    # (default): every key at its true rotary distance, so the far mass decays with distance; routers trained on it
    # ranked 1M's coarse nodes by position (docs/functional_context.md, eleventh session). "attended": the attention
    # SSA computes, far blocks (outside the local window) at far_distance, which ranks them by content alone. Not the
    # default: on the CPU block-retrieval toy (3 seeds, trained at 256 with far_distance 128) it routed the needle
    # less often (hit rate 0.88 against 0.99 at 256, 0.82 against 0.99 at 4,096 with beam_min 4; docs/ssa.md);
    # unmeasured on the GPU recipe. Same when far_distance = 0.
    distill_target: str = "true_distance"
    # routing=distill: how a query block's rows (and its kv head's G query heads) combine into the target. "mean"
    # (default): their average mass on each key block, what the block's rows attend in total. "max": each key block
    # gets the largest mass any one row puts on it (renormalised over the routed range), since a routed block
    # serves every row of the query block and is worth routing if one row needs it: a lookup row among rows that
    # spread their far mass over look-alike blocks (niah_multikey's haystack of other needles) is not averaged
    # away. The loss weight of a query block is then min(1, that sum). router=oracle ranks blocks by the same target.
    distill_rows: str = "mean"
    # routing=distill: the router's block scores that the loss trains. "mean" (default): q_mean . k_mean, the leaf
    # score of leaf_score=mean. "bound": sum over dims of max(q_d * min_d, q_d * max_d) over each block's token
    # keys, leaf_score=bound's leaf score, so the router learns the score it is read with (fc63, 256K, 64 routed
    # blocks: leaf_score=bound at evaluation ranked a prose needle's block at median 19 on right answers against
    # ~200 with mean leaves, on a router distilled through means). The gradient reaches the keys at each block's
    # per-dimension extremes: every token is projected with gradient, [Bt, T, Hkv x d] kept for the backward per
    # layer, so it is for the short distillation stages. Needs the router's own pooling (not the sequence-parallel
    # wrappers).
    # Not the default: on the CPU toy (2-token needles, 3 seeds) it routed the needle less often at every length
    # (hit 0.46-0.67 against 0.75-0.91 distilling means; docs/ssa.md).
    distill_score: str = "mean"
    # What produces the routing scores: "learned" (default), a router of its own per layer
    # (``ssa_kernels/router.py``) on the detached layer input, trained only by ``routing``;
    # "attention", the attention's own post-RoPE q and k (no extra weights; it also learns as
    # attention trains, so ``routing: none`` does not freeze it). "oracle" (a diagnostic, not a router): each
    # query block routes the topk_blocks key blocks where the layer's own DENSE attention puts the most mass
    # (``distill.block_mass``, a dense attention forward per layer call): what a perfect router distilled from
    # that attention would pick, the upper bound of routing for a given model. Full forwards only (no KV-cache
    # decoding, no per-token rule, not under parallel=ring); needs routing=none. With far_distance the mass is that of
    # the attention SSA computes (far blocks at far_distance), as ``distill_target=attended``.
    router: str = "learned"
    # Which implementation runs: "auto" (Triton kernels on CUDA tensors, the PyTorch reference
    # elsewhere), "triton" or "reference" (the oracle; slow on GPU, exact and simple).
    backend: str = "auto"
    # Rotary distance of the far blocks (sink and routed, i.e. every listed block outside the local window);
    # 0: each key at its true distance. > 0: every key of a far block is attended as if it sat far_distance
    # tokens before the query, as InfLLM places retrieved memory, so a query never sees a rotary distance
    # above max(local_window, far_distance) however long the context: a lookup trained at short lengths
    # meets no new distances at 1M. Local keys keep their true distances. Needs router=learned or oracle (the
    # selection must not depend on positions); not under ulysses/ring. docs/ssa.md, "Far distance".
    far_distance: int = 0

    @property
    def local_blocks(self) -> int:
        return max(1, self.local_window // self.block_size)

    def validate(self) -> None:
        if self.block_size < 1 or self.branching < 2 or self.topk_blocks < 0 or self.sink_blocks < 0:
            raise ValueError("attention.block_size >= 1, branching >= 2, topk_blocks >= 0, sink_blocks >= 0")
        if self.routing not in ROUTINGS:
            raise ValueError(f"attention.routing={self.routing!r}: use one of {ROUTINGS}")
        if self.routing == "distill" and self.router != "learned":
            raise ValueError(
                "attention.routing=distill trains a learned router (attention.router=learned); with "
                "router=attention the target would be the scores' own attention: use straight_through"
            )
        if self.beam_min < 1 or any(w < 1 for w in self.beam_widths) or self.beam_full_span < 0:
            raise ValueError(
                "attention.beam_min >= 1, every attention.beam_widths entry >= 1 and attention.beam_full_span >= 0"
            )
        if self.distill_target not in DISTILL_TARGETS:
            raise ValueError(f"attention.distill_target={self.distill_target!r}: use one of {DISTILL_TARGETS}")
        if self.distill_rows not in DISTILL_ROWS:
            raise ValueError(f"attention.distill_rows={self.distill_rows!r}: use one of {DISTILL_ROWS}")
        if self.distill_score not in DISTILL_SCORES:
            raise ValueError(f"attention.distill_score={self.distill_score!r}: use one of {DISTILL_SCORES}")
        if self.distill_blocks < 0 or self.distill_weight < 0:
            raise ValueError("attention.distill_blocks >= 0 (0: all query blocks) and attention.distill_weight >= 0")
        if self.node_score not in NODE_SCORES:
            raise ValueError(f"attention.node_score={self.node_score!r}: use one of {NODE_SCORES}")
        if self.leaf_score not in LEAF_SCORES:
            raise ValueError(f"attention.leaf_score={self.leaf_score!r}: use one of {LEAF_SCORES}")
        if self.backend not in BACKENDS:
            raise ValueError(f"attention.backend={self.backend!r}: use auto, triton or reference")
        if self.router not in ROUTERS:
            raise ValueError(f"attention.router={self.router!r}: use one of {ROUTERS}")
        if self.router == "oracle" and self.routing != "none":
            raise ValueError(
                "attention.router=oracle selects by the layer's dense attention mass, which no gradient trains: "
                "set attention.routing=none"
            )
        if self.far_distance < 0 or (self.far_distance and self.router == "attention"):
            raise ValueError(
                f"attention.far_distance={self.far_distance}: use 0 (true distances) or a positive distance with "
                "attention.router=learned or oracle (the attention's own rotated q/k would route by position)"
            )
        if self.local_window % self.block_size:
            raise ValueError(
                f"attention.local_window={self.local_window} must be a multiple of block_size={self.block_size}"
            )
