"""Training FLOPs per token (the MFU numerator): attention counted by the keys each query really attends."""

import torch
from transformers import LlamaConfig

from ssa_kernels import SSAConfig
from ssa_kernels.selector import select_blocks
from train.tracking import attended_keys, flops_per_token

SSA = {"block_size": 16, "topk_blocks": 3, "local_window": 32, "sink_blocks": 1}


def visible_keys(indices: torch.Tensor, seq_len: int, block: int) -> torch.Tensor:
    """[Bt, Hkv, nb, S] selection -> mean visible keys per (kv head, query), counted block by block."""
    t = torch.arange(seq_len)
    i = t // block  # [T]
    rows = indices[..., i, :]  # [Bt, Hkv, T, S]
    full = (rows >= 0) & (rows < i[:, None])
    diag = rows == i[:, None]
    return (full.sum(-1) * block + diag.sum(-1) * (t % block + 1)).double().mean()


def test_attended_keys_matches_its_definition_and_a_real_selection():
    for seq_len in (10, 64, 96, 100, 333, 1000):
        cap = (1 + 3) * 16 + 32
        brute = sum(t + 1 if t < cap else cap - 16 + t % 16 + 1 for t in range(seq_len)) / seq_len
        assert abs(attended_keys(seq_len, SSA) - brute) < 1e-9, seq_len
    assert attended_keys(1000, None) == 500.5
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 4, 1000, 32, generator=g), torch.randn(1, 2, 1000, 32, generator=g)
    sel = select_blocks(q, k, SSAConfig(**SSA, branching=4))
    seen = visible_keys(sel.indices, 1000, 16).item()
    # an upper bound that a full selection reaches: within 3% (the selector may route fewer blocks)
    assert seen <= attended_keys(1000, SSA) + 1e-9
    assert seen >= 0.97 * attended_keys(1000, SSA)


def test_ssa_flops_count_the_budget_not_the_sequence():
    cfg = LlamaConfig(hidden_size=2048, num_attention_heads=32, num_key_value_heads=8, num_hidden_layers=16)
    n, emb, seq = 1_235_814_400, 262_668_288, 524_288
    dense = flops_per_token(cfg, n, emb, seq)
    assert dense == 6 * (n - emb) + 12 * 16 * (seq + 1) / 2 * 2048
    cfg.ssa = {**SSA, "block_size": 64, "topk_blocks": 112, "local_window": 1024}
    sparse = flops_per_token(cfg, n, emb, seq)
    keys = 8256 - 64 + 32.5  # the budget, the diagonal block half seen on average (to within 8256/seq)
    assert abs((sparse - 6 * (n - emb)) / (12 * 16 * 2048) - keys) < 8256**2 / seq
    assert dense / sparse > 5
