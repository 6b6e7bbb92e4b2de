"""The fast (Triton) SSA selector against the reference: same structure, same choices up to fp32 near-ties,
prefix consistency, documents, GQA, ragged lengths, several configs. On CPU the kernels run in Triton's
interpreter (tests/conftest.py), where top-k is done by ranks instead of the GPU's bitonic tl.topk."""

import dataclasses
import functools
import math
import sys
from pathlib import Path

import pytest
import torch

import ssa_kernels.selector.fast as fast_module
import ssa_kernels.selector.reference as R
from ssa_kernels.config import SSAConfig
from ssa_kernels.selector import (
    PooledRoute,
    Selection,
    fast,
    routing_scores,
    select_blocks,
    select_blocks_fast,
    select_blocks_fast_pooled,
    select_blocks_pooled,
)
from ssa_kernels.selector.fast import _runs
from ssa_kernels.selector.reference import _union, block_means, block_minmax, row_levels

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/ is not a package
from memprobe import MaxTensorProbe  # noqa: E402

WIDE = [10**9]  # beams that keep every node
DEV = "cuda" if torch.cuda.is_available() else "cpu"  # the bound search's tests: compiled on a GPU, interpreted on CPU


def make_qk(bt, hq, hkv, seq_len, d, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(bt, hq, seq_len, d, generator=gen, dtype=dtype)
    return q, torch.randn(bt, hkv, seq_len, d, generator=gen, dtype=dtype)


def make_doc_ids(bt, seq_len, num_docs, seed=0):
    """Nondecreasing document ids per row; boundaries anywhere, mid-block included."""
    gen = torch.Generator().manual_seed(seed)
    starts = torch.rand(bt, seq_len, generator=gen).argsort(-1)[:, : num_docs - 1]
    first = torch.zeros(bt, seq_len, dtype=torch.long)
    first.scatter_(1, starts, 1)
    first[:, 0] = 0
    return first.cumsum(-1)


def expected_ranges(doc_ids, bt, seq_len, cfg):
    """Routed range [lo, hi) per (b, i), from the definition, with a token loop."""
    out = {}
    for b in range(bt):
        docs = None if doc_ids is None else doc_ids[b].tolist()
        for i in range(math.ceil(seq_len / cfg.block_size)):
            t = i * cfg.block_size
            while docs is not None and t > 0 and docs[t - 1] == docs[i * cfg.block_size]:
                t -= 1
            lo = t // cfg.block_size if docs is not None else 0
            out[b, i] = (max(lo, cfg.sink_blocks), i - cfg.local_blocks + 1)
    return out


def check_structure(sel, bt, hkv, seq_len, cfg, doc_ids):
    sel = Selection(*(t.cpu() for t in (sel.indices, sel.routed, sel.routed_scores, sel.candidates)))
    doc_ids = None if doc_ids is None else doc_ids.cpu()
    nb = math.ceil(seq_len / cfg.block_size)
    size = cfg.sink_blocks + cfg.topk_blocks + cfg.local_blocks
    assert sel.indices.shape == (bt, hkv, nb, size) and sel.indices.dtype == torch.long
    assert sel.routed.shape == sel.routed_scores.shape == (bt, hkv, nb, cfg.topk_blocks)
    assert sel.routed.dtype == sel.candidates.dtype == torch.long and sel.candidates.shape == (bt, hkv, nb)
    assert sel.routed_scores.dtype == torch.float32
    valid = sel.routed >= 0
    assert not (valid[..., 1:] & ~valid[..., :-1]).any(), "padding only at the end"
    assert ((sel.routed[..., 1:] > sel.routed[..., :-1]) | ~valid[..., 1:]).all(), "strictly ascending"
    assert torch.equal(torch.isfinite(sel.routed_scores), valid)
    assert torch.equal(sel.indices, _union(sel.routed, cfg)), "indices = sinks | routed | local, sorted, padded"
    ranges = expected_ranges(doc_ids, bt, seq_len, cfg)
    lo = torch.tensor([[ranges[b, i][0] for i in range(nb)] for b in range(bt)]).view(bt, 1, nb, 1)
    hi = torch.tensor([ranges[0, i][1] for i in range(nb)]).view(1, 1, nb, 1)
    assert ((sel.routed >= lo) & (sel.routed < hi) | ~valid).all(), "routed inside [doc start or sinks, window)"
    assert torch.equal(sel.candidates > 0, (hi > lo).view(-1, 1, nb).expand(bt, hkv, nb)), "candidates iff range"


def assert_matches_reference(q, k, cfg, doc_ids=None, max_differing=0.02):
    """Fast == reference up to fp32 near-ties: rows whose routed sets differ must have the same sorted
    scores (recomputed in fp64) to 1e-5 relative, and be rare; candidates equal where the sets are equal."""
    fast, ref = select_blocks_fast(q, k, cfg, doc_ids), select_blocks(q, k, cfg, doc_ids)
    bt, hkv, seq_len = q.shape[0], k.shape[1], q.shape[2]
    check_structure(fast, bt, hkv, seq_len, cfg, doc_ids)
    same = (fast.routed == ref.routed).all(-1)  # both ascending, -1 last: equal rows <=> equal sets
    assert same.float().mean() >= 1 - max_differing, f"{(~same).sum()} of {same.numel()} rows differ"
    assert torch.equal(fast.candidates[same], ref.candidates[same])
    exact_fast = routing_scores(q.double(), k.double(), fast.routed, cfg, doc_ids)  # fp64, -inf padding
    exact_ref = routing_scores(q.double(), k.double(), ref.routed, cfg, doc_ids)
    scale = exact_ref[torch.isfinite(exact_ref)].abs().max() if torch.isfinite(exact_ref).any() else 1.0
    torch.testing.assert_close(
        exact_fast.sort(-1, descending=True).values, exact_ref.sort(-1, descending=True).values,
        rtol=1e-5, atol=1e-5 * scale,
    )  # fmt: skip
    torch.testing.assert_close(fast.routed_scores.double(), exact_fast, rtol=1e-5, atol=1e-5 * scale)
    return fast, ref, same


CASES = {
    # bt, hq, hkv, T, cfg, docs, d
    "gqa4-T203-blk4-br2-docs": (2, 8, 2, 203, SSAConfig(4, 2, 5, 8, 1, top_nodes=3), 4, 8),
    "gqa1-T517-blk8-br4": (2, 2, 2, 517, SSAConfig(8, 4, 6, 32, 1, top_nodes=4), 0, 16),
    "gqa4-T3207-blk16-br8-sink2-docs": (1, 4, 1, 3207, SSAConfig(16, 8, 12, 32, 2, top_nodes=4), 3, 8),
    "gqa2-T640-blk5-br3-beams35-D12": (2, 4, 2, 640, SSAConfig(5, 3, 7, 10, 1, [3, 5], top_nodes=2), 5, 12),
    "T400-blk4-br2-beam1-top1": (1, 4, 2, 400, SSAConfig(4, 2, 4, 8, 0, [1], top_nodes=1), 0, 8),
    "T300-blk4-br3-wide": (1, 2, 1, 300, SSAConfig(4, 3, 5, 4, 1, WIDE, top_nodes=3), 2, 8),
    # beam_full_span 32 = a level-3 node: levels 3 and above keep every node, levels 1-2 keep 1
    "T700-blk4-br2-full-span32": (1, 4, 2, 700, SSAConfig(4, 2, 3, 8, 1, [1], top_nodes=2, beam_full_span=32), 2, 8),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_matches_reference(case):
    bt, hq, hkv, seq_len, cfg, docs, d = case
    q, k = make_qk(bt, hq, hkv, seq_len, d)
    doc_ids = make_doc_ids(bt, seq_len, docs) if docs else None
    fast, ref, same = assert_matches_reference(q, k, cfg, doc_ids)
    assert (fast.routed >= 0).sum() > 0.5 * (ref.routed >= 0).sum()


def test_budget_covering_everything_routes_every_candidate():
    cfg = SSAConfig(block_size=4, branching=2, topk_blocks=64, local_window=8, sink_blocks=1, top_nodes=4)
    q, k = make_qk(2, 4, 2, 250, 8)
    doc_ids = make_doc_ids(2, 250, 3)
    fast, ref = select_blocks_fast(q, k, cfg, doc_ids), select_blocks(q, k, cfg, doc_ids)
    for name in ("indices", "routed", "candidates"):
        assert torch.equal(getattr(fast, name), getattr(ref, name)), name
    ranges = expected_ranges(doc_ids, 2, 250, cfg)
    for (b, i), (lo, hi) in ranges.items():
        assert [j for j in fast.routed[b, 0, i].tolist() if j >= 0] == list(range(lo, hi))


@pytest.mark.parametrize("beams", [[], WIDE], ids=["default-beams", "wide-beams"])
def test_exact_integer_ties_equal_reference(beams):
    """Integer scores (exact in fp32 too) tie often: the same ties must go to the same (smaller) nodes."""
    cfg = SSAConfig(block_size=1, branching=2, topk_blocks=4, local_window=1, sink_blocks=1, beam_widths=beams)
    cfg.top_nodes = 2
    q = torch.ones(2, 1, 200, 1)  # query summary 1, D = 1: a block's score is its (integer) key
    k = torch.randint(-3, 4, (2, 1, 200, 1), generator=torch.Generator().manual_seed(0)).float()
    fast, ref = select_blocks_fast(q, k, cfg), select_blocks(q, k, cfg)
    for name in ("indices", "routed", "routed_scores", "candidates"):
        assert torch.equal(getattr(fast, name), getattr(ref, name)), name


def test_zero_keys_prefer_the_smaller_block_index():
    cfg = SSAConfig(block_size=4, branching=3, topk_blocks=5, local_window=8, sink_blocks=1, top_nodes=3)
    q, k = make_qk(1, 2, 1, 400, 4)
    fast, ref = select_blocks_fast(q, torch.zeros_like(k), cfg), select_blocks(q, torch.zeros_like(k), cfg)
    for name in ("indices", "routed", "routed_scores", "candidates"):
        assert torch.equal(getattr(fast, name), getattr(ref, name)), name


def test_default_beams_find_planted_blocks():
    bt, hq, hkv, block, d = 2, 4, 2, 16, 16
    cfg = SSAConfig(block_size=block, branching=4, topk_blocks=4, local_window=32, sink_blocks=1, top_nodes=8)
    nb = 256
    seq_len = nb * block - 5
    gen = torch.Generator().manual_seed(1)
    u = torch.nn.functional.normalize(torch.randn(bt, hkv, 1, d, generator=gen), dim=-1)
    q = 0.5 * torch.randn(bt, hq, seq_len, d, generator=gen) + u.repeat_interleave(hq // hkv, dim=1) * math.sqrt(d)
    k = torch.randn(bt, hkv, seq_len, d, generator=gen)
    planted = {(b, h): [17 + 40 * b + 11 * h, 150 + 30 * b + 7 * h] for b in range(bt) for h in range(hkv)}
    for (b, h), js in planted.items():
        for j in js:
            k[b, h, j * block : (j + 1) * block] = 16 * u[b, h]
    sel = select_blocks_fast(q, k, cfg)
    for (b, h), js in planted.items():
        for j in js:
            hits = [j in sel.routed[b, h, i].tolist() for i in range(j + cfg.local_blocks, nb)]
            assert all(hits), (b, h, j)


@pytest.mark.parametrize("docs", [0, 4], ids=["nodocs", "docs"])
def test_prefix_consistency(docs):
    """Selection of block i depends on nothing after it: a truncated sequence selects the same, bit for bit
    (same candidates, same fp32 scores), at block-aligned and ragged cuts; later keys and queries do not matter."""
    cfg = SSAConfig(block_size=8, branching=3, topk_blocks=6, local_window=16, sink_blocks=1, top_nodes=4)
    bt, hq, hkv, seq_len = 2, 4, 2, 8 * 180 + 3
    q, k = make_qk(bt, hq, hkv, seq_len, 8)
    doc_ids = make_doc_ids(bt, seq_len, docs) if docs else None
    full = select_blocks_fast(q, k, cfg, doc_ids)
    for cut in (8 * 13, 8 * 40 + 5, 8 * 111):
        part = select_blocks_fast(
            q[:, :, :cut], k[:, :, :cut], cfg, None if doc_ids is None else doc_ids[:, :cut].contiguous()
        )
        m = cut // cfg.block_size  # whole blocks of the truncated sequence
        for name in ("indices", "routed", "routed_scores", "candidates"):
            assert torch.equal(getattr(part, name)[:, :, :m], getattr(full, name)[:, :, :m]), (cut, name)
    later_q, later_k = q.clone(), k.clone()
    later_q[:, :, 8 * 90 :] = torch.randn_like(later_q[:, :, 8 * 90 :])
    later_k[:, :, 8 * 90 :] = torch.randn_like(later_k[:, :, 8 * 90 :])
    other = select_blocks_fast(later_q, later_k, cfg, doc_ids)
    assert torch.equal(other.indices[:, :, :90], full.indices[:, :, :90])


def test_strided_inputs_and_fp64_fallback():
    cfg = SSAConfig(block_size=4, branching=2, topk_blocks=3, local_window=8, sink_blocks=1, top_nodes=4)
    q, k = make_qk(2, 4, 2, 150, 8)
    base = select_blocks_fast(q, k, cfg)
    strided = select_blocks_fast(
        q.transpose(1, 2).contiguous().transpose(1, 2), k.transpose(1, 2).contiguous().transpose(1, 2), cfg
    )
    for name in ("indices", "routed", "routed_scores", "candidates"):
        assert torch.equal(getattr(base, name), getattr(strided, name)), name
    fast64, ref64 = select_blocks_fast(q.double(), k.double(), cfg), select_blocks(q.double(), k.double(), cfg)
    for name in ("indices", "routed", "routed_scores", "candidates"):
        assert torch.equal(getattr(fast64, name), getattr(ref64, name)), name


@pytest.mark.parametrize("seq_len", [1, 5, 8], ids=["T1", "T5-lt-block", "T8-eq-block"])
def test_single_block_and_no_routing(seq_len):
    cfg = SSAConfig(block_size=8, branching=2, topk_blocks=3, local_window=16, sink_blocks=2, top_nodes=1)
    q, k = make_qk(2, 2, 1, seq_len, 4)
    fast, ref = select_blocks_fast(q, k, cfg), select_blocks(q, k, cfg)
    for name in ("indices", "routed", "routed_scores", "candidates"):
        assert torch.equal(getattr(fast, name), getattr(ref, name)), name
    cfg0 = SSAConfig(block_size=4, topk_blocks=0, local_window=8, sink_blocks=1)
    q, k = make_qk(1, 1, 1, 30, 4)
    assert torch.equal(select_blocks_fast(q, k, cfg0).indices, select_blocks(q, k, cfg0).indices)


def test_topk_larger_than_candidates():
    cfg = SSAConfig(block_size=4, branching=2, topk_blocks=50, local_window=4, sink_blocks=1, top_nodes=2)
    q, k = make_qk(1, 2, 2, 39, 4)
    fast, ref = select_blocks_fast(q, k, cfg), select_blocks(q, k, cfg)
    for name in ("indices", "routed", "candidates"):
        assert torch.equal(getattr(fast, name), getattr(ref, name)), name


def test_very_wide_beams_fall_back_to_the_reference(monkeypatch):
    """Beams keeping every node need ~nb candidate slots per query block: past _MAX_SLOTS * _MAX_WARPS the reference
    runs (here 2,048 slots against one warp's 1,024, with _MAX_WARPS set to 1)."""
    cfg = SSAConfig(block_size=1, branching=2, topk_blocks=3, local_window=1, sink_blocks=1, beam_widths=WIDE)
    cfg.top_nodes = 2
    q, k = (x.to(DEV) for x in make_qk(1, 1, 1, 1500, 2))  # on a GPU machine, CPU tensors always take the reference
    assert not fast_module._use_reference(q, k, 1500, cfg)  # 2,048 slots: two warps
    assert fast_module._use_reference(q, k, 20000, cfg)  # 16,384 slots: more than 8 warps hold
    monkeypatch.setattr(fast_module, "_MAX_WARPS", 1)
    assert fast_module._use_reference(q, k, 1500, cfg)
    fast, ref = select_blocks_fast(q, k, cfg), select_blocks(q, k, cfg)
    for name in ("indices", "routed", "routed_scores", "candidates"):
        assert torch.equal(getattr(fast, name), getattr(ref, name)), name


# The issue-6 recipe's search (beams [64,256,512], branching 8, 64 top nodes) over 4,500 blocks of one token: rows
# past 4,096 blocks have four levels, as a 1M row of 64-token blocks, and need 4,096 leaf slots.
WIDE_RECIPE = SSAConfig(block_size=1, branching=8, topk_blocks=8, local_window=4, sink_blocks=1,
                        beam_widths=[64, 256, 512], top_nodes=64, beam_min=64)  # fmt: skip


@pytest.mark.parametrize("scores", [("mean", "mean"), ("bound", "bound")], ids=["mean", "both-bound"])
def test_search_wider_than_a_warp_matches_reference(scores, poisoned_and_no_fallback):
    """Over _MAX_SLOTS candidate slots the kernel takes a warp per _MAX_SLOTS (four here) instead of handing the search
    to the reference (which the fixture forbids): same selection as the reference, into garbage-filled outputs."""
    seq_len = 4500
    ma, mb = fast_module._slots(fast_module._runs(seq_len, WIDE_RECIPE), WIDE_RECIPE)
    assert (ma, mb) == (1024, 4096) and mb > fast_module._MAX_SLOTS
    assert fast_module._shared_constants(WIDE_RECIPE, seq_len, 4, ma, mb, 1)["num_warps"] == 4
    q, k = make_qk(1, 2, 1, seq_len, 4, seed=5)
    doc_ids = None  # one document: the late rows' ranges hold every earlier block (documents: the cases above)
    cfg = SSAConfig(**{**vars(WIDE_RECIPE), "node_score": scores[0], "leaf_score": scores[1]})
    if scores == ("mean", "mean"):
        fast_sel, ref_sel, same = assert_matches_reference(q, k, cfg, doc_ids)
    else:
        fast_sel, ref_sel = select_blocks_fast(q, k, cfg, doc_ids), select_blocks(q, k, cfg, doc_ids)
        assert_bound_search_matches_reference(
            fast_sel, ref_sel, select_blocks(q, k, WIDE_RECIPE, doc_ids), 1, 1, seq_len, cfg, doc_ids,
            reference_search(q, k, cfg, doc_ids),
        )  # fmt: skip
    four_levels = fast_sel.candidates[0, 0, 4096:]  # scored candidates, every level: > 2,048 slots' worth a row
    assert four_levels.min() > 2048 and torch.equal(four_levels, ref_sel.candidates[0, 0, 4096:])


def test_runs_follow_row_levels():
    for nb, cfg in ((1, SSAConfig()), (5000, SSAConfig()), (777, SSAConfig(branching=3, top_nodes=5)),
                    (100, SSAConfig(branching=2, top_nodes=1))):  # fmt: skip
        levels = torch.cat([torch.full((r1 - r0,), lv) for r0, r1, lv in _runs(nb, cfg)])
        assert torch.equal(levels, row_levels(nb, cfg, torch.device("cpu")))


def test_largest_tensor_grows_linearly():
    cfg = SSAConfig(block_size=16, topk_blocks=8, local_window=32)
    largest = {}
    for seq_len in (2**12, 2**14):
        q, k = make_qk(1, 2, 1, seq_len, 4)
        with MaxTensorProbe() as probe:
            select_blocks_fast(q, k, cfg, make_doc_ids(1, seq_len, 3))
        largest[seq_len] = probe.max_numel
    assert largest[2**14] <= 4.5 * largest[2**12], largest


BOUNDS = {"node-bound": ("bound", "mean"), "leaf-bound": ("mean", "bound"), "both-bound": ("bound", "bound")}


@pytest.fixture
def poisoned_and_no_fallback(monkeypatch):
    """Every torch.empty comes back filled with garbage (NaN, or 12345678 for integers), so an output element the
    kernels leave unwritten fails check_structure; and the fast selector may not hand the search to the reference."""
    real_empty = torch.empty

    def poisoned(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        return t.fill_(math.nan if t.is_floating_point() else 12345678)

    monkeypatch.setattr(torch, "empty", poisoned)
    monkeypatch.setattr(fast, "select_blocks", None)
    monkeypatch.setattr(fast, "select_blocks_pooled", None)


def reference_search(q, k, cfg: SSAConfig, doc_ids):
    """The reference selector's search inputs for q / k (as ``select_blocks`` builds them), for boundary_swap."""
    nb = -(-q.shape[2] // cfg.block_size)
    q_sum = R.query_summary(q, k.shape[1], cfg.block_size) / math.sqrt(q.shape[-1])
    prefix = R._key_prefix(k, cfg.block_size)
    lo, hi = R.routed_bounds(doc_ids, q.shape[2], cfg, q.device)
    tables = R.search_bounds(prefix, cfg, functools.partial(R.block_minmax, k, cfg.block_size))
    return q_sum, prefix, lo, hi, R.row_levels(nb, cfg, q.device), tables


def boundary_swap(search, cfg: SSAConfig, b: int, h: int, row: int, fast_only: set, ref_only: set) -> bool:
    """Whether a row the two searches route differently is an fp32 near-tie at a beam's boundary: some block only the
    fast search routed has its ancestor ranked by the reference just outside the beam (rank = width) at some level, a
    block only the reference routed has its ancestor just inside (rank = width - 1) at that level, and the two
    ancestors' scores agree to 1e-5 relative (the Triton sums round in another order than torch's)."""
    q_sum, prefix, lo, hi, levels, tables = search
    sl = slice(row, row + 1)

    def ranks(block):
        out = R.beam_search(q_sum[:, :, sl], prefix[:, :, : row + 2], lo[:, sl], hi[sl], levels[sl], cfg,
                            target=torch.tensor([block], device=q_sum.device), bounds=tables)  # fmt: skip
        return out[3][b, h, 0].tolist()

    widths = R.level_widths(levels[sl], cfg)[0].tolist()
    widths[0] = cfg.topk_blocks  # blocks: the routed ones are "kept"
    ours, theirs = {t: ranks(t) for t in fast_only}, {t: ranks(t) for t in ref_only}
    for level, width in enumerate(widths):
        out = [t for t, r in ours.items() if r[level] == width]
        inside = [t for t, r in theirs.items() if r[level] == width - 1]
        for a in out:
            for c in inside:
                nodes = torch.tensor([a, c], device=q_sum.device) // cfg.branching**level
                node = nodes.view(1, 1, 1, 2).expand(q_sum.shape[0], q_sum.shape[1], 1, 2)
                sa, sc = R._node_scores(q_sum[:, :, sl], prefix[:, :, : row + 2], tables, node,
                                        cfg.branching**level, cfg, lo[:, sl], hi[sl])[b, h, 0].tolist()  # fmt: skip
                if abs(sa - sc) <= 1e-5 * abs(sc):
                    return True
    return False


def assert_bound_search_matches_reference(fast_sel, ref_sel, other_sel, bt, hkv, seq_len, cfg, doc_ids, search=None):
    """The Triton search with bound scores against the reference's: same structure, the same routed sets but for
    rare fp32 near-ties, routed_scores equal to the reference's (they are the bounds under leaf_score=bound); and
    ``other_sel`` (mean scores) routes or scores some rows differently. A row routed differently must be a near-tie at
    a beam's boundary (:func:`boundary_swap`, with ``search`` = :func:`reference_search`; on the H200 one row of
    4,800 was: two level-1 nodes 7e-8 apart); without ``search``, its sorted scores must agree to 1e-5 relative."""
    check_structure(fast_sel, bt, hkv, seq_len, cfg, doc_ids)
    same = (fast_sel.routed == ref_sel.routed).all(-1)
    assert same.float().mean() >= 0.98, f"{(~same).sum()} of {same.numel()} rows differ"
    assert torch.equal(fast_sel.candidates[same], ref_sel.candidates[same])
    assert torch.equal(fast_sel.indices[same], ref_sel.indices[same])
    got, want = fast_sel.routed_scores.double(), ref_sel.routed_scores.double()
    scale = want[torch.isfinite(want)].abs().max()
    torch.testing.assert_close(got[same], want[same], rtol=1e-5, atol=1e-5 * scale)
    for b, h, row in (~same).nonzero().tolist():
        fast_only = set(fast_sel.routed[b, h, row].tolist()) - set(ref_sel.routed[b, h, row].tolist())
        ref_only = set(ref_sel.routed[b, h, row].tolist()) - set(fast_sel.routed[b, h, row].tolist())
        if search is not None:
            assert boundary_swap(search, cfg, b, h, row, fast_only, ref_only), (b, h, row, fast_only, ref_only)
        else:
            torch.testing.assert_close(got[b, h, row].sort().values, want[b, h, row].sort().values, rtol=1e-5,
                                       atol=1e-5 * scale)  # fmt: skip
    differ = not torch.equal(ref_sel.routed, other_sel.routed) or not torch.equal(
        ref_sel.routed_scores.nan_to_num(0.0, neginf=0.0), other_sel.routed_scores.nan_to_num(0.0, neginf=0.0)
    )
    assert differ, "bound and mean scores route and score alike: a vacuous case"


@pytest.mark.parametrize("scores", BOUNDS.values(), ids=BOUNDS.keys())
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bound_scores_match_reference(case, scores, poisoned_and_no_fallback):
    """node_score / leaf_score = bound in the Triton search (the sparse min / max tables, two gathers a whole node, four
    an edge node) against
    the reference's _bound_ranges, into garbage-filled outputs: documents, GQA 1-4, ragged lengths, beams of one,
    wide beams and beam_full_span."""
    bt, hq, hkv, seq_len, cfg, docs, d = case
    q, k = (x.to(DEV) for x in make_qk(bt, hq, hkv, seq_len, d, seed=7))
    doc_ids = make_doc_ids(bt, seq_len, docs).to(DEV) if docs else None
    if scores == ("bound", "mean"):  # node bounds change a route only where beams prune: one node per level
        cfg = SSAConfig(**{**vars(cfg), "beam_widths": [1], "beam_min": 1, "beam_full_span": 0})
    bound = SSAConfig(**{**vars(cfg), "node_score": scores[0], "leaf_score": scores[1]})
    assert_bound_search_matches_reference(
        select_blocks_fast(q, k, bound, doc_ids), select_blocks(q, k, bound, doc_ids),
        select_blocks(q, k, cfg, doc_ids), bt, hkv, seq_len, bound, doc_ids, reference_search(q, k, bound, doc_ids),
    )  # fmt: skip


@pytest.mark.parametrize("case", ["gqa4-T203-blk4-br2-docs", "gqa4-T3207-blk16-br8-sink2-docs", "T300-blk4-br3-wide"])
def test_bound_search_variants_select_and_score_bit_for_bit_alike(case, monkeypatch):
    """The two ways the kernel scores bounds give the same selection and scores bit for bit: whole nodes by a
    select and a multiply with the row's partial nodes apart (Tuning.bound_edges_apart, the default, where the
    branching is a power of two; br3 takes the next), and both runs for every candidate, a whole node's repeated run
    masked (the kernel scripts/bench_selector.py --bound-variants times against it). Both bounds, so every level takes
    the path."""
    bt, hq, hkv, seq_len, cfg, docs, d = CASES[case]
    q, k = (x.to(DEV) for x in make_qk(bt, hq, hkv, seq_len, d, seed=5))
    doc_ids = make_doc_ids(bt, seq_len, docs).to(DEV) if docs else None
    bound = SSAConfig(**{**vars(cfg), "node_score": "bound", "leaf_score": "bound"})
    sels = []
    for apart in (True, False):
        tuning = dataclasses.replace(fast_module.TUNING, bound_edges_apart=apart)
        monkeypatch.setattr(fast_module, "TUNING", tuning)
        sels.append(select_blocks_fast(q, k, bound, doc_ids))
    for name in ("indices", "routed", "routed_scores", "candidates"):
        assert torch.equal(getattr(sels[0], name), getattr(sels[1], name)), name
    assert (sels[0].routed >= 0).any()


@pytest.mark.parametrize("scores", [("mean", "bound"), ("bound", "bound")], ids=["leaf-bound", "both-bound"])
def test_bound_tables_of_bf16_keys_are_bf16_and_exact(scores, monkeypatch, poisoned_and_no_fallback):
    """Under leaf_score=bound every table entry is a min / max of the keys: with bf16 keys (here fp32 tensors holding
    bf16 values, as block_minmax gives them from bf16 keys) the fast search builds the tables in bf16, and selects and
    scores bit for bit as over fp32 tables of the same numbers, and as the reference does. Keys that are not bf16
    values keep fp32 tables."""
    bt, hq, hkv, seq_len, cfg, docs, d = CASES["gqa4-T3207-blk16-br8-sink2-docs"]
    q, k = (x.bfloat16().float().to(DEV) for x in make_qk(bt, hq, hkv, seq_len, d, seed=9))
    doc_ids = make_doc_ids(bt, seq_len, docs).to(DEV)
    bound = SSAConfig(**{**vars(cfg), "node_score": scores[0], "leaf_score": scores[1]})
    real, made = fast_module._tables, []
    monkeypatch.setattr(fast_module, "_tables", lambda *a: made.append(real(*a)) or made[-1])
    got = select_blocks_fast(q, k, bound, doc_ids)
    assert [t.dtype for t in made[-1]] == [torch.bfloat16] * 2
    monkeypatch.setattr(fast_module, "_tables", lambda *a: tuple(t.float() for t in real(*a)))
    wide = select_blocks_fast(q, k, bound, doc_ids)
    for name in ("indices", "routed", "routed_scores", "candidates"):
        assert torch.equal(getattr(got, name), getattr(wide, name)), name
    assert_bound_search_matches_reference(
        got, select_blocks(q, k, bound, doc_ids), select_blocks(q, k, cfg, doc_ids), bt, hkv, seq_len, bound, doc_ids,
        reference_search(q, k, bound, doc_ids),
    )  # fmt: skip
    monkeypatch.setattr(fast_module, "_tables", lambda *a: made.append(real(*a)) or made[-1])
    select_blocks_fast(*(x.to(DEV) for x in make_qk(bt, hq, hkv, seq_len, d, seed=9)), bound, doc_ids)
    assert [t.dtype for t in made[-1]] == [torch.float32] * 2  # fp32 keys: fp32 tables


def test_pooled_leaf_bound_search_matches_reference(poisoned_and_no_fallback):
    """select_blocks_fast_pooled with leaf and node bounds (the learned router's path: block means and the token
    keys' block min / max given) = select_blocks_pooled."""
    g = torch.Generator().manual_seed(11)
    bt, hkv, seq_len, d, bs = 2, 2, 1000, 8, 8
    keys = torch.randn(bt, hkv, seq_len, d, generator=g).to(DEV)
    low, high = block_minmax(keys, bs)
    q_mean = torch.randn(bt, hkv, -(-seq_len // bs), d, generator=g).to(DEV)
    route = PooledRoute(q_mean, block_means(keys, bs), seq_len, low, high)
    cfg = SSAConfig(block_size=bs, branching=4, topk_blocks=5, local_window=16, top_nodes=4, beam_widths=[2])
    bound = SSAConfig(**{**vars(cfg), "node_score": "bound", "leaf_score": "bound"})
    doc_ids = make_doc_ids(bt, seq_len, 3).to(DEV)
    assert_bound_search_matches_reference(
        select_blocks_fast_pooled(route, bound, doc_ids), select_blocks_pooled(route, bound, doc_ids),
        select_blocks_pooled(route, cfg, doc_ids), bt, hkv, seq_len, bound, doc_ids,
    )  # fmt: skip


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cuda_matches_reference(dtype):
    """The compiled kernels (bitonic tl.topk / tl.sort) on the GPU, at the default config."""
    cfg = SSAConfig()
    q, k = make_qk(2, 8, 2, 64 * 1200 + 17, 128, seed=3)
    doc_ids = make_doc_ids(2, q.shape[2], 3, seed=3)
    q, k, doc_ids = q.cuda().to(dtype), k.cuda().to(dtype), doc_ids.cuda()
    fast, ref, same = assert_matches_reference(q, k, cfg, doc_ids, max_differing=0.01)
    cpu_cfg = SSAConfig(block_size=8, branching=4, topk_blocks=6, local_window=32, sink_blocks=1, top_nodes=8)
    q, k = make_qk(2, 8, 2, 3000, 16, seed=4)
    assert_matches_reference(q.cuda(), k.cuda(), cpu_cfg, make_doc_ids(2, 3000, 5).cuda())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("scores", BOUNDS.values(), ids=BOUNDS.keys())
def test_cuda_bound_scores_match_reference(scores):
    """The compiled bound search on the GPU at the default config (bf16 inputs, beams of 64 as the issue-6 recipe)."""
    cfg = SSAConfig(beam_widths=[64])
    bound = SSAConfig(**{**vars(cfg), "node_score": scores[0], "leaf_score": scores[1]})
    q, k = make_qk(2, 8, 2, 64 * 1200 + 17, 128, seed=3)
    doc_ids = make_doc_ids(2, q.shape[2], 3, seed=3).cuda()
    q, k = q.cuda().bfloat16(), k.cuda().bfloat16()
    assert_bound_search_matches_reference(
        select_blocks_fast(q, k, bound, doc_ids), select_blocks(q, k, bound, doc_ids),
        select_blocks(q, k, cfg, doc_ids), 2, 2, q.shape[2], bound, doc_ids, reference_search(q, k, bound, doc_ids),
    )  # fmt: skip


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("scores", [("mean", "mean"), ("bound", "bound")], ids=["mean", "both-bound"])
def test_cuda_search_wider_than_a_warp_matches_reference(scores):
    """The issue-6 model's shape and search on the GPU past 4,096 blocks of 64 tokens (256K), where beams [64,256,512]
    need 4,096 leaf slots: four warps a row, compiled, against the reference (bf16 inputs, one prompt as in an
    evaluation; documents: the cases above)."""
    cfg = SSAConfig(topk_blocks=64, local_window=256, beam_widths=[64, 256, 512], beam_min=64,
                    node_score=scores[0], leaf_score=scores[1])  # fmt: skip
    seq_len = 64 * 4200 + 17
    assert max(fast_module._slots(fast_module._runs(4201, cfg), cfg)) == 4096
    q, k = make_qk(1, 8, 4, seq_len, 64, seed=6)
    q, k = q.cuda().bfloat16(), k.cuda().bfloat16()
    if scores == ("mean", "mean"):
        fast_sel, ref_sel, _ = assert_matches_reference(q, k, cfg, None, max_differing=0.01)
    else:
        fast_sel, ref_sel = select_blocks_fast(q, k, cfg), select_blocks(q, k, cfg)
        mean = SSAConfig(**{**vars(cfg), "node_score": "mean", "leaf_score": "mean"})
        assert_bound_search_matches_reference(
            fast_sel, ref_sel, select_blocks(q, k, mean), 1, 4, seq_len, cfg, None, reference_search(q, k, cfg, None),
        )  # fmt: skip
    assert fast_sel.candidates[:, :, 4096:].min() > 2048  # the rows of four levels scored more than two warps' slots
