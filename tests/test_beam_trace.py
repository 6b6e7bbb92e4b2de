"""Beam trace: where a token's coarse-to-fine search kept or dropped a given key block
(``DecodeState.trace``, ``beam_search(target=...)``, ``DecodeRouteRecorder(trace_block=...)``).

Checked against a brute-force ranking of every node at every level (full beams: nothing is dropped, so each
level's rank is the node's rank among all nodes overlapping the routed range), for consistency with what the
token routes under narrow beams, and on a constructed needle whose coarse ancestors are diluted by
anti-aligned neighbours (lost at the top level with beam 1, routed with full beams)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from ssa_kernels import SSAConfig
from ssa_kernels.decode import DecodeState
from ssa_kernels.diagnostics import DecodeRouteRecorder, blocks_listed
from ssa_kernels.selector.reference import _num_levels

sys.path.insert(0, str(Path(__file__).parent))
from test_ssa_decode import tiny_ssa_model  # noqa: E402

BASE = dict(block_size=16, branching=4, topk_blocks=4, local_window=32, sink_blocks=1, top_nodes=4, routing="none")


def brute_ranks(q: torch.Tensor, k: torch.Tensor, cfg: SSAConfig, target: int) -> torch.Tensor:
    """[Bt, Hkv, L]: rank of ``target``'s ancestor among all nodes of each level overlapping the last token's
    routed range, by its score q_mean . (keys of the node inside the range) / (nominal tokens * sqrt(D)), ties
    to the smaller node; -1 where the ancestor does not overlap the range."""
    bt, hq, t, d = q.shape
    hkv, bs = k.shape[1], cfg.block_size
    nb = -(-t // bs)
    last = (nb - 1) * bs
    q_mean = q[:, :, last:].reshape(bt, hkv, hq // hkv, -1, d).mean((2, 3)) / math.sqrt(d)  # (Bt, Hkv, D)
    lo, hi = cfg.sink_blocks, (nb - 1) - (cfg.local_blocks - 1)
    levels = _num_levels(nb, cfg)
    out = torch.full((bt, hkv, levels), -1, dtype=torch.long)
    for level in range(levels):
        cover = cfg.branching**level
        nodes = [n for n in range(-(-nb // cover)) if n * cover < hi and (n + 1) * cover > lo]
        want = target // cover
        if want not in nodes:
            continue
        for b in range(bt):
            for h in range(hkv):

                def score(n, b=b, h=h, cover=cover):
                    s, e = max(n * cover, lo) * bs, min((n + 1) * cover, hi) * bs
                    return float(q_mean[b, h] @ k[b, h, s:e].sum(0)) / (cover * bs)

                order = sorted(nodes, key=lambda n: (-score(n), n))
                out[b, h, level] = order.index(want)
    return out


def qk(t: int, seed: int, hq: int = 4, hkv: int = 2, d: int = 8):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, h, t, d, generator=g, dtype=torch.float64) for h in (hq, hkv)]


@pytest.mark.parametrize("t", [1000, 1024], ids=["partial-last-block", "whole-blocks"])
def test_trace_ranks_equal_a_brute_force_ranking_when_beams_keep_everything(t):
    cfg = SSAConfig(**BASE, beam_widths=[10**6])
    q, k = qk(t, seed=t)
    state = DecodeState.from_prefill(q, k, cfg)
    nb = -(-t // cfg.block_size)
    routed = state.route(cfg, torch.float64)
    outcomes = set()
    for target in range(nb):
        trace = state.trace(cfg, target, torch.float64)
        want = brute_ranks(q, k, cfg, target)
        assert torch.equal(trace.rank, want), target
        assert trace.width.tolist() == [cfg.topk_blocks] + [10**6] * (want.shape[-1] - 1)
        lost = trace.lost_at()
        in_range = cfg.sink_blocks <= target < nb - cfg.local_blocks
        # full beams: a routable block is routed (top-k at the blocks) or lost at level 0, never above
        expect = torch.where(want[..., 0] < cfg.topk_blocks, -1, 0) if in_range else torch.full_like(lost, -2)
        assert torch.equal(lost, expect), target
        listed = blocks_listed(routed, [target])
        assert torch.equal(lost == -1, listed & in_range), target
        outcomes |= set(lost.flatten().tolist())
    assert outcomes == {-2, -1, 0}


def test_narrow_beams_lose_blocks_at_coarse_levels_and_the_trace_says_where():
    """beam 1 at every level: lost_at == -1 exactly for the routed blocks; a block lost at level L was not among
    the kept nodes there (rank >= width), was kept above L and was no candidate below it."""
    cfg = SSAConfig(**BASE, beam_widths=[1])
    q, k = qk(2000, seed=3)
    state = DecodeState.from_prefill(q, k, cfg)
    nb = -(-2000 // cfg.block_size)
    routed = state.route(cfg, torch.float64)
    seen = set()
    for target in range(cfg.sink_blocks, nb - cfg.local_blocks):
        trace = state.trace(cfg, target, torch.float64)
        lost = trace.lost_at()
        assert torch.equal(lost == -1, blocks_listed(routed, [target])), target
        for b, h in zip(*torch.nonzero(lost >= 0, as_tuple=True)):
            level, ranks = int(lost[b, h]), trace.rank[b, h]
            assert ranks[level] >= trace.width[level]
            assert (ranks[:level] == -1).all()
            assert ((ranks[level + 1 :] >= 0) & (ranks[level + 1 :] < trace.width[level + 1 :])).all()
        seen |= set(lost.flatten().tolist())
    # 4 levels (125 blocks -> 32 -> 8 -> 2): lost at each level above the blocks; never at the blocks, where the
    # one kept node's 4 children all fit the top 4
    assert seen == {-1, 1, 2, 3}, seen


def test_a_needle_diluted_at_coarse_levels_is_lost_at_the_top_with_beam_1_and_routed_with_full_beams():
    """Every query is u; the needle block's keys are 3u, its three siblings' -3u, every other key 0. The needle
    scores highest of all blocks, but its level-1 node averages (3 - 9) / 4 < 0 and its level-2 node
    (3 - 9) / 16 < 0: ranked last of the 4 top nodes."""
    d, t, needle = 8, 1024, 20  # 64 blocks -> 16 -> 4 nodes; block 20 under level-1 node 5, level-2 node 1
    u = torch.zeros(d, dtype=torch.float64)
    u[0] = 1.0
    q = u.expand(1, 2, t, d).clone()
    k = torch.zeros(1, 1, t, d, dtype=torch.float64)
    k[0, 0, 20 * 16 : 24 * 16] = -3 * u
    k[0, 0, needle * 16 : (needle + 1) * 16] = 3 * u
    narrow = SSAConfig(**BASE, beam_widths=[1])
    trace = DecodeState.from_prefill(q, k, narrow).trace(narrow, needle, torch.float64)
    assert trace.rank[0, 0].tolist() == [-1, -1, 3] and trace.lost_at().tolist() == [[2]]
    full = SSAConfig(**BASE, beam_widths=[10**6])
    state = DecodeState.from_prefill(q, k, full)
    trace = state.trace(full, needle, torch.float64)
    assert trace.rank[0, 0].tolist() == [0, 15, 3] and trace.lost_at().tolist() == [[-1]]
    assert blocks_listed(state.route(full, torch.float64), [needle]).all()


@torch.no_grad()
def test_decode_route_recorder_traces_the_block_at_every_token():
    """trace_block: each record gets the token's trace too; it agrees with the token's own selection."""
    model = tiny_ssa_model("llama", rule="block")
    prompt = torch.randint(0, 97, (1, 150), generator=torch.Generator().manual_seed(8))
    plain = model.generate(prompt, max_new_tokens=6, do_sample=False)
    got = {}
    for block in (1, 4, 8):  # routable (blocks 1..7 with the model's 2 local blocks at block 9)
        with DecodeRouteRecorder(lambda layer, indices, trace: (indices.clone(), trace), trace_block=block) as rec:
            assert torch.equal(model.generate(prompt, max_new_tokens=6, do_sample=False), plain)
        assert sorted(rec.records) == list(range(149, 155))
        for records in rec.records.values():
            for indices, trace in records.values():
                lost = trace.lost_at()
                assert torch.equal(lost == -1, blocks_listed(indices, [block]) & (lost != -2))
                got[block] = got.get(block, set()) | set(lost.flatten().tolist())
    assert got[8] == {-2}  # block 8 is in the local window (blocks 8, 9 at token 149): never a candidate
    assert -1 in got[1] | got[4] and (got[1] | got[4]) - {-1}  # some routed, some lost
