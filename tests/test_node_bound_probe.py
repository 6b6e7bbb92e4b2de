"""scripts/node_bound_probe.py: the node bound it swaps into the reference selector is an upper bound of the best
routable block's score under the node (equal to it for a node of one routable block), blind to blocks outside
[lo, hi), and the selector's own scorer is back after the context."""

import math

import torch

import ssa_kernels.selector.reference as selector_reference
from tests.scripts_loader import load_script


def test_node_bound_bounds_the_best_routable_block_and_ignores_the_rest():
    probe = load_script("node_bound_probe")
    g = torch.Generator().manual_seed(0)
    bt, hkv, nb, d, B, cover = 2, 3, 24, 8, 4, 8
    keys = torch.randn(bt, hkv, nb, d, generator=g, dtype=torch.float64)
    prefix = torch.nn.functional.pad((keys * B).cumsum(-2), (0, 0, 1, 0))  # block sums of full blocks of B tokens
    rows = 5
    q = torch.randn(bt, hkv, rows, d, generator=g, dtype=torch.float64)
    lo = torch.tensor([[1, 0, 3, 9, 2]]).view(1, 1, rows, 1)
    hi = torch.tensor([20, 24, 11, 10, 17]).view(1, 1, rows, 1)
    node = torch.arange(3).expand(bt, hkv, rows, 3)
    got = probe.bound_scores(q, prefix, node, cover, B, lo, hi)
    exact = q @ keys.transpose(-1, -2)  # (Bt, Hkv, R, nb): every block's score
    for r in range(rows):
        for n in range(3):
            blocks = [j for j in range(n * cover, (n + 1) * cover) if int(lo[0, 0, r]) <= j < int(hi[0, 0, r])]
            if not blocks:
                continue
            best = exact[:, :, r, blocks].amax(-1)
            assert (got[:, :, r, n] >= best - 1e-9).all()
            if len(blocks) == 1:
                torch.testing.assert_close(got[:, :, r, n], best)
            outside = [j for j in range(n * cover, (n + 1) * cover) if j not in blocks]
            if outside:  # moving a block outside the range moves nothing
                moved = keys.clone()
                moved[:, :, outside] += 100.0
                pm = torch.nn.functional.pad((moved * B).cumsum(-2), (0, 0, 1, 0))
                torch.testing.assert_close(
                    probe.bound_scores(q, pm, node, cover, B, lo, hi)[:, :, r, n], got[:, :, r, n]
                )
    assert not math.isnan(got.sum().item())
    with probe.node_scores("bound"):
        assert selector_reference._score_ranges is probe.bound_scores
    assert selector_reference._score_ranges is probe._MEAN_SCORES
