"""attention.ssa.leaf_score=bound: blocks scored by an upper bound of their best token (per-dimension min / max of
the block's token keys), against brute force: the block min / max, the whole beam search (a loop written from the
definition, with node_score mean and bound), the planted token a block mean dilutes, the learned router's pooled
path, decoding token by token, and the refusals."""

import sys
from pathlib import Path

import pytest
import torch
from transformers import DynamicCache

import ssa_kernels.router as router_module
from ssa_kernels.config import SSAConfig
from ssa_kernels.decode import DecodeState
from ssa_kernels.hf import convert_to_ssa
from ssa_kernels.router import SSARouter
from ssa_kernels.selector import PooledRoute, select_blocks, select_blocks_fast, select_blocks_pooled
from ssa_kernels.selector.reference import _num_levels, block_minmax

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/ is not a package
from test_ssa_node_bound import routed_as_defined  # noqa: E402
from test_ssa_selector import make_doc_ids  # noqa: E402
from tiny import tiny_hf_model  # noqa: E402


def bound_over(q, keys):
    """sum over dims of max(q * min, q * max), min / max over the rows of keys [n, D] (the definition)."""
    mn, mx = keys.amin(0), keys.amax(0)
    return torch.maximum(q * mn, q * mx).sum().item()


def test_block_minmax_is_each_blocks_min_and_max():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 45, 5, generator=g)  # a partial last block of 5 tokens
    low, high = block_minmax(x, 8)
    assert low.shape == high.shape == (2, 3, 6, 5) and low.dtype == torch.float32
    for j in range(6):
        torch.testing.assert_close(low[:, :, j], x[:, :, j * 8 : (j + 1) * 8].amin(2), rtol=0, atol=0)
        torch.testing.assert_close(high[:, :, j], x[:, :, j * 8 : (j + 1) * 8].amax(2), rtol=0, atol=0)


def brute_force_search(q_mean, k, lo, hi, cfg, widths):
    """Routed blocks of one (row, kv head) from the definition: every node of the row's pyramid overlapping
    [lo, hi) at its top; a block scores the bound over its tokens, a node above the blocks the bound over the
    tokens of its blocks in [lo, hi) (node_score bound) or q . their token sum / its nominal token count (mean);
    the best widths[level] kept (ties to the smaller node), their children next. k: [T, D] one kv head's keys."""
    bs = cfg.block_size
    levels = _num_levels(hi + cfg.local_blocks, cfg)
    top = cfg.branching ** (levels - 1)
    nodes = [n for n in range(-(-hi // top)) if n * top < hi and (n + 1) * top > lo]
    for level in range(levels - 1, -1, -1):
        cover = cfg.branching**level
        nodes = [n for n in nodes if n * cover < hi and (n + 1) * cover > lo]
        scores = {}
        for n in nodes:
            keys = k[max(n * cover, lo) * bs : min((n + 1) * cover, hi) * bs]
            if level == 0 or cfg.node_score == "bound":
                scores[n] = bound_over(q_mean, keys.float().double())  # the tables are fp32
            else:
                scores[n] = (keys.sum(0) @ q_mean).item() / (cover * bs)
        keep = cfg.topk_blocks if level == 0 else widths[level]
        nodes = sorted(nodes, key=lambda n: (-scores[n], n))[:keep]
        if level:
            nodes = sorted(c for n in nodes for c in range(n * cfg.branching, (n + 1) * cfg.branching))
    return sorted(nodes)


@pytest.mark.parametrize("node_score", ["mean", "bound"])
@pytest.mark.parametrize("docs", [0, 4], ids=["nodocs", "docs"])
def test_leaf_bound_beam_search_equals_the_definition(docs, node_score):
    g = torch.Generator().manual_seed(3 + docs)
    bt, hq, hkv, seq_len, d = 2, 4, 2, 403, 6
    # beams of 2 at the finest kept level: 6 candidate blocks for 2 routed, so the leaf scores decide
    cfg = SSAConfig(block_size=4, branching=3, topk_blocks=2, local_window=8, sink_blocks=1, top_nodes=3,
                    beam_widths=[2, 2], node_score=node_score, leaf_score="bound")  # fmt: skip
    q = torch.randn(bt, hq, seq_len, d, generator=g, dtype=torch.float64)
    k = torch.randn(bt, hkv, seq_len, d, generator=g, dtype=torch.float64)
    doc_ids = make_doc_ids(bt, seq_len, docs) if docs else None

    def want(b, h, qm, lo, hi, widths):
        return brute_force_search(qm, k[b, h], lo, hi, cfg, widths)

    differs = routed_as_defined(q, k, cfg, SSAConfig(**{**cfg.__dict__, "leaf_score": "mean"}), doc_ids, want)
    assert differs > 20  # not vacuous: the leaf bound routes differently from the leaf mean


def planted_token():
    """q, k for the last query block of 24 blocks of 8 tokens: every key a little along q, the decoy blocks 0.2
    more on average; block 9 has one token at 3.0 along q and the rest at 0. Its mean is below every decoy's."""
    bs, nb = 8, 24
    q = torch.zeros(1, 1, nb * bs, 4)
    q[..., 0] = 1.0
    k = torch.full((1, 1, nb * bs, 4), 0.0)
    k[..., 0] = 0.5
    k[..., 9 * bs : 10 * bs, 0] = 0.0
    k[..., 9 * bs + 5, 0] = 3.0  # mean 0.375 < 0.5, best token 3.0
    return q, k


@pytest.mark.parametrize("selector", ["reference", "fast"])
def test_leaf_bound_routes_the_token_a_block_mean_dilutes(selector):
    select = select_blocks if selector == "reference" else select_blocks_fast
    q, k = planted_token()
    base = dict(block_size=8, branching=4, topk_blocks=1, local_window=16, top_nodes=4, beam_widths=[1])
    routed = {
        (leaf, node): select(q, k, SSAConfig(**base, leaf_score=leaf, node_score=node)).routed[0, 0, -1].item()
        for leaf in ("mean", "bound")
        for node in ("mean", "bound")
    }
    assert routed[("bound", "bound")] == 9, routed  # beams of one node per level, bounds at every level
    assert routed[("mean", "mean")] != 9 and routed[("mean", "bound")] != 9, routed


def test_pooled_router_path_equals_the_per_token_path(monkeypatch):
    """SSARouter.pooled(..., leaf_bounds=True): the block min / max of its per-token keys (computed in chunks of
    whole blocks), and select_blocks_pooled on them = select_blocks on the per-token route."""
    g = torch.Generator().manual_seed(5)
    monkeypatch.setattr(router_module, "_LEAF_TOKENS", 40)  # chunks of 5 blocks of 8: the seams are exercised
    router = SSARouter(24, 2, 8).double()
    hidden = torch.randn(2, 301, 24, generator=g, dtype=torch.float64)
    cfg = SSAConfig(block_size=8, branching=2, topk_blocks=3, local_window=16, top_nodes=4, beam_widths=[2],
                    node_score="bound", leaf_score="bound", routing="none")  # fmt: skip
    route = router.pooled(hidden, 8, leaf_bounds=True)
    rq, rk = router(hidden)
    low, high = block_minmax(rk, 8)
    torch.testing.assert_close(route.k_low, low.to(route.k_low.dtype), rtol=0, atol=1e-12)
    torch.testing.assert_close(route.k_high, high.to(route.k_high.dtype), rtol=0, atol=1e-12)
    assert router.pooled(hidden, 8).k_low is None  # only when asked
    want = select_blocks(rq, rk, cfg)
    got = select_blocks_pooled(route, cfg)
    assert torch.equal(got.indices, want.indices)
    with pytest.raises(ValueError, match="leaf_score"):  # a route without the min / max (the parallel wrappers')
        select_blocks_pooled(PooledRoute(route.q_mean, route.k_mean, route.seq_len), cfg)


@pytest.mark.parametrize("node_score", ["mean", "bound"])
def test_decode_state_routes_with_leaf_bounds_as_the_training_selector(node_score):
    """DecodeState.route with leaf_score=bound (per-block key min / max grown token by token) equals the training
    selector's last query block over each prefix, from a prefill and from an empty state."""
    cfg = SSAConfig(block_size=8, branching=2, topk_blocks=2, local_window=16, top_nodes=4, beam_widths=[1, 2],
                    routing="none", node_score=node_score, leaf_score="bound")  # fmt: skip
    g = torch.Generator().manual_seed(8)
    q = torch.randn(2, 4, 520, 16, generator=g, dtype=torch.float64)
    k = torch.randn(2, 2, 520, 16, generator=g, dtype=torch.float64)
    prefilled = DecodeState.from_prefill(q[:, :, :150], k[:, :, :150], cfg)
    empty = DecodeState.empty(2, 2, 16, cfg)
    seen = set()
    for t in range(520):
        empty.append(q[:, :, t], k[:, :, t], cfg)
        if t > 149:
            prefilled.append(q[:, :, t], k[:, :, t], cfg)
        if t < 149 or (t % 5 and t % 8 != 7 and t < 519):
            continue  # a sample of tokens (block ends among them); the states take every one
        want = select_blocks(q[:, :, : t + 1], k[:, :, : t + 1], cfg).indices[:, :, -1:]
        assert torch.equal(prefilled.route(cfg, torch.float64), want), t
        assert torch.equal(empty.route(cfg, torch.float64), want), t
        seen.add(tuple(want[0, 0, 0].tolist()))
    assert len(seen) > 20 and prefilled.leaf_low.shape[2] >= 520 // 8


@torch.no_grad()
def test_hf_model_routes_by_leaf_bounds_in_training_prefill_and_decoding():
    """A converted HF model (learned routers) under leaf_score=bound: the training forward (the router's pooled
    route with its block min / max) = a cached prefill under the same block rule (per-token router keys), and
    cached decoding token by token = the per-token rule's full forward; the leaf bound changes the logits."""
    cfg = SSAConfig(block_size=16, topk_blocks=2, local_window=32, top_nodes=4, beam_widths=[2],
                    node_score="bound", leaf_score="bound")  # fmt: skip
    model = convert_to_ssa(tiny_hf_model("qwen3", torch.float64).eval(), cfg)
    ids = torch.randint(0, 97, (1, 300), generator=torch.Generator().manual_seed(6))
    pooled = model(ids, use_cache=False).logits  # rule "block", no cache: PooledRoute with k_low / k_high
    per_token = model(ids, past_key_values=DynamicCache(config=model.config), use_cache=True).logits
    torch.testing.assert_close(pooled, per_token, rtol=1e-10, atol=1e-10)
    model.config.ssa = {**model.config.ssa, "rule": "causal_rows"}  # read at every call
    rows = model(ids, use_cache=False).logits
    cache = DynamicCache(config=model.config)
    steps = [model(ids[:, :100], past_key_values=cache, use_cache=True).logits]
    steps += [model(ids[:, t : t + 1], past_key_values=cache, use_cache=True).logits for t in range(100, 300)]
    torch.testing.assert_close(torch.cat(steps, 1), rows, rtol=1e-10, atol=1e-10)
    assert all(state.leaf_low is not None for state in cache.ssa_decode_states.values())
    model.config.ssa = {**model.config.ssa, "leaf_score": "mean"}
    assert (model(ids, use_cache=False).logits - rows).abs().amax() > 1e-6  # not vacuous


def test_refusals_name_the_key():
    with pytest.raises(ValueError, match="leaf_score"):
        SSAConfig(leaf_score="max").validate()
    from ssa_kernels.decode.fast import DecodePyramid

    with pytest.raises(ValueError, match="leaf_score=bound"):
        DecodePyramid.empty(1, 1, 8, 256, SSAConfig(block_size=8, local_window=16, topk_blocks=2, leaf_score="bound"))
    # a state prefilled under leaf_score=mean has no block min / max to route with under bound
    mean_cfg = SSAConfig(block_size=8, local_window=16, topk_blocks=2, routing="none")
    q, k = torch.randn(1, 2, 100, 8), torch.randn(1, 1, 100, 8)
    state = DecodeState.from_prefill(q, k, mean_cfg)
    with pytest.raises(ValueError, match="leaf_score=bound"):
        state.route(SSAConfig(**{**mean_cfg.__dict__, "leaf_score": "bound"}))
