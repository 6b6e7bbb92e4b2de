"""attention.ssa.node_score=bound: coarse nodes scored by an upper bound of their best block (per-dimension min /
max over the block means), against brute force: the sparse min / max tables, the bound itself, the beam search
over it (a loop written from the definition), decoding's incremental tables, and the needle that mean-pooled
nodes dilute."""

import math
import sys
from pathlib import Path

import pytest
import torch

from ssa_kernels.config import SSAConfig
from ssa_kernels.decode import DecodeState
from ssa_kernels.selector import select_blocks, select_blocks_fast
from ssa_kernels.selector.reference import _bound_ranges, _key_prefix, _num_levels, block_bounds, bound_span

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/ is not a package
from test_ssa_selector import diluted_needle, expected_ranges, make_doc_ids  # noqa: E402


def means_of(k, block_size):
    """Block means [Bt, Hkv, nb, D] by a loop (complete blocks; a partial last one is divided by block_size too,
    as the selector does: it is never routed)."""
    nb = math.ceil(k.shape[2] / block_size)
    return torch.stack([k[:, :, j * block_size : (j + 1) * block_size].sum(2) / block_size for j in range(nb)], 2)


def bound_of(q, means, s, e):
    """Bound of blocks [s, e) from the definition: sum over dims of max(q * min, q * max)."""
    mn, mx = means[s:e].amin(0), means[s:e].amax(0)
    return torch.maximum(q * mn, q * mx).sum().item()


def test_tables_give_the_min_max_bound_of_any_run_and_bound_the_best_block():
    g = torch.Generator().manual_seed(0)
    bt, hkv, d, block = 2, 3, 8, 4
    k = torch.randn(bt, hkv, block * 300 - 2, d, generator=g, dtype=torch.float64)
    prefix = _key_prefix(k, block)
    means = means_of(k, block)
    tables = block_bounds(prefix, block, span=100)
    assert tables.low.shape[0] == 7  # runs up to 64 blocks; longer ones are two overlapping runs of 64
    runs = [(0, 1), (5, 6), (0, 100), (17, 81), (250, 300), (3, 67), (99, 100)]
    runs += [tuple(sorted(torch.randint(0, 300, (2,), generator=g).tolist())) for _ in range(30)]
    runs = [(s, e) for s, e in runs if e - s >= 1 and e - s <= 100]
    q = torch.randn(bt, hkv, 1, d, generator=g, dtype=torch.float64)
    for s, e in runs:
        node = torch.zeros(bt, hkv, 1, 1, dtype=torch.long)  # one node covering everything, cut to [s, e)
        got = _bound_ranges(q, tables, node, 10**6, torch.tensor([[s]]).view(1, 1, 1, 1), torch.tensor(e))
        for b in range(bt):
            for h in range(hkv):
                # the tables hold the fp64 means rounded to fp32
                want = bound_of(q[b, h, 0], means[b, h].float().double(), s, e)
                assert got[b, h, 0, 0].item() == pytest.approx(want, rel=1e-12, abs=1e-12), (s, e)
                best = (means[b, h, s:e] @ q[b, h, 0]).max().item()
                assert want >= best - 1e-5 and (e - s > 1 or want == pytest.approx(best, rel=1e-6, abs=1e-6))


def test_tables_extended_block_by_block_equal_tables_built_at_once():
    """Decoding extends the tables as blocks complete (in place; rebuilt when they must grow or deepen): every
    entry whose run lies within the blocks covered equals that of tables built over all of them at once."""
    g = torch.Generator().manual_seed(1)
    cfg = SSAConfig(block_size=2, branching=2, top_nodes=2)
    k = torch.randn(1, 2, 2 * 200, 4, generator=g, dtype=torch.float64)
    prefix = _key_prefix(k, 2)
    grown, shapes = None, set()
    for n in [1, 2, 3, 4, 5, 9, 16, 17, 40, 41, 42, 100, 101, 150, 200]:
        grown = block_bounds(prefix[:, :, : n + 1], 2, bound_span(n, cfg), grown)
        shapes.add(tuple(grown.low.shape))
        whole = block_bounds(prefix[:, :, : n + 1], 2, bound_span(n, cfg))
        for j in range(whole.low.shape[0]):
            w = n - 2**j + 1
            assert torch.equal(grown.low[j, :, :, :w], whole.low[j, :, :, :w]), (n, j)
            assert torch.equal(grown.high[j, :, :, :w], whole.high[j, :, :, :w]), (n, j)
    assert len(shapes) > 3 and grown.blocks == 200  # the buffers grew and deepened along the way


def brute_force_search(q_mean, means, lo, hi, cfg, widths):
    """Routed blocks of one (row, kv head) by the beam search's definition, in loops: every node of the row's
    pyramid overlapping [lo, hi) at its top, scored by the bound over its blocks in [lo, hi) (blocks by their
    own score), the best ``widths[level]`` kept (ties to the smaller node), their children next."""
    levels = _num_levels(hi + cfg.local_blocks, cfg)  # the pyramid of the row's own prefix (i + 1 blocks)
    top = cfg.branching ** (levels - 1)
    nodes = [n for n in range(-(-hi // top)) if n * top < hi and (n + 1) * top > lo]
    for level in range(levels - 1, -1, -1):
        cover = cfg.branching**level
        nodes = [n for n in nodes if n * cover < hi and (n + 1) * cover > lo]
        scores = {n: bound_of(q_mean, means, max(n * cover, lo), min((n + 1) * cover, hi)) for n in nodes}
        keep = cfg.topk_blocks if level == 0 else widths[level]
        nodes = sorted(nodes, key=lambda n: (-scores[n], n))[:keep]
        if level:
            nodes = sorted(c for n in nodes for c in range(n * cfg.branching, (n + 1) * cfg.branching))
    return sorted(nodes)


def routed_as_defined(q, k, cfg, other_cfg, doc_ids, brute) -> int:
    """Asserts that select_blocks(q, k, cfg) routes every (batch row, kv head, query block) as
    ``brute(b, h, q_mean, lo, hi, widths)`` does (q_mean the block's scaled mean query over its kv head's group,
    [lo, hi) its routed range, widths the beam kept per level above the blocks from cfg.beam_widths, coarsest
    first); returns how many of them other_cfg routes differently (a check that the comparison is not vacuous)."""
    bt, hq, seq_len, d = q.shape
    hkv, bs = k.shape[1], cfg.block_size
    group = hq // hkv
    sel, other = select_blocks(q, k, cfg, doc_ids), select_blocks(q, k, other_cfg, doc_ids)
    ranges = expected_ranges(doc_ids, bt, seq_len, cfg)
    differs = 0
    for b in range(bt):
        for h in range(hkv):
            for i in range(math.ceil(seq_len / bs)):
                lo, hi = ranges[b, i]
                qm = q[b, group * h : group * (h + 1), i * bs : (i + 1) * bs].mean((0, 1)) / math.sqrt(d)
                levels = _num_levels(i + 1, cfg)
                beams = cfg.beam_widths
                widths = {lv: beams[min(levels - 1 - lv, len(beams) - 1)] for lv in range(1, levels)}
                want = brute(b, h, qm, lo, hi, widths) if lo < hi else []
                got = [j for j in sel.routed[b, h, i].tolist() if j >= 0]
                assert got == want, (b, h, i)
                differs += got != [j for j in other.routed[b, h, i].tolist() if j >= 0]
    return differs


@pytest.mark.parametrize("docs", [0, 4], ids=["nodocs", "docs"])
def test_bound_beam_search_equals_the_definition(docs):
    g = torch.Generator().manual_seed(2 + docs)
    bt, hq, hkv, seq_len, d = 2, 4, 2, 403, 6
    cfg = SSAConfig(block_size=4, branching=3, topk_blocks=3, local_window=8, sink_blocks=1, top_nodes=3,
                    beam_widths=[2, 1], node_score="bound")  # fmt: skip
    q = torch.randn(bt, hq, seq_len, d, generator=g, dtype=torch.float64)
    k = torch.randn(bt, hkv, seq_len, d, generator=g, dtype=torch.float64)
    doc_ids = make_doc_ids(bt, seq_len, docs) if docs else None
    means = means_of(k, cfg.block_size)

    def want(b, h, qm, lo, hi, widths):
        return brute_force_search(qm, means[b, h], lo, hi, cfg, widths)

    differs = routed_as_defined(q, k, cfg, SSAConfig(**{**cfg.__dict__, "node_score": "mean"}), doc_ids, want)
    assert differs > 20  # not vacuous: the bound routes differently from the mean somewhere


@pytest.mark.parametrize("selector", ["reference", "fast"])
def test_bound_keeps_the_diluted_needle_with_beams_of_one(selector):
    """The needle whose level-2 node averages below the decoys (test_ssa_selector.diluted_needle): beams of one
    node per level drop it with mean scores and keep it with bound scores; exhaustive beams agree (blocks are
    scored alike). "fast": the Triton search scoring the bounds itself (tests/test_ssa_selector_fast.py)."""
    select = select_blocks if selector == "reference" else select_blocks_fast
    base = dict(block_size=1, branching=4, topk_blocks=1, local_window=1, sink_blocks=1, top_nodes=4)
    q, k = diluted_needle()
    routed = {
        (score, beam): select(q, k, SSAConfig(**base, beam_widths=[beam], node_score=score)).routed[0, 0, -1].item()
        for score in ("mean", "bound")
        for beam in (1, 10**9)
    }
    assert routed[("bound", 1)] == routed[("bound", 10**9)] == routed[("mean", 10**9)] == 40, routed
    assert routed[("mean", 1)] not in range(32, 48), routed


@pytest.mark.parametrize("node_score", ["mean", "bound"])
def test_wide_beams_route_alike_whatever_scores_the_nodes(node_score):
    g = torch.Generator().manual_seed(4)
    q, k = torch.randn(1, 4, 700, 8, generator=g, dtype=torch.float64), torch.randn(1, 2, 700, 8, generator=g)
    base = dict(block_size=4, branching=2, topk_blocks=4, local_window=8, top_nodes=4, beam_widths=[10**9])
    want = select_blocks(q, k.double(), SSAConfig(**base))
    got = select_blocks(q, k.double(), SSAConfig(**base, node_score=node_score))
    assert torch.equal(got.routed, want.routed)
    torch.testing.assert_close(got.routed_scores, want.routed_scores, rtol=1e-12, atol=1e-12)


def test_decode_state_routes_with_bounds_as_the_training_selector():
    """DecodeState.route with node_score=bound (tables made lazily, extended as blocks complete) equals the
    training selector's last query block over each prefix, from a prefill and token by token."""
    cfg = SSAConfig(block_size=8, branching=2, topk_blocks=2, local_window=16, top_nodes=4, beam_widths=[1, 2],
                    routing="none", node_score="bound")  # fmt: skip
    g = torch.Generator().manual_seed(7)
    q = torch.randn(2, 4, 700, 16, generator=g, dtype=torch.float64)
    k = torch.randn(2, 2, 700, 16, generator=g, dtype=torch.float64)
    state = DecodeState.from_prefill(q[:, :, :150], k[:, :, :150], cfg)
    seen = set()
    for t in range(149, 700):
        if t > 149:
            state.append(q[:, :, t], k[:, :, t], cfg)
        if t % 7 and t % 8 != 7 and t < 699:
            continue  # a sample of tokens (block ends among them); the state takes every one
        got = state.route(cfg, torch.float64)
        want = select_blocks(q[:, :, : t + 1], k[:, :, : t + 1], cfg).indices[:, :, -1:]
        assert torch.equal(got, want), t
        seen.add(tuple(got[0, 0, 0].tolist()))
    assert len(seen) > 20 and state.bounds is not None and state.bounds.blocks == 699 // 8


def test_bad_node_score_and_fast_decoding_are_refused():
    with pytest.raises(ValueError, match="node_score"):
        SSAConfig(node_score="max").validate()
    from ssa_kernels.decode.fast import DecodePyramid

    with pytest.raises(ValueError, match="node_score=bound"):
        DecodePyramid.empty(1, 1, 8, 256, SSAConfig(block_size=8, local_window=16, topk_blocks=2, node_score="bound"))
