"""SSA router diagnostics: selection statistics by hand and against brute force, far mass against
``sparse_attention``'s own lse, dense recall against a T x T softmax, the recorder's restore,
``router_recall`` on tiny converted Llamas (ceiling, budget, linear memory) and the trainer's logs."""

import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import AttentionInterface

from ssa_kernels import SSAConfig, select_blocks, sparse_attention
from ssa_kernels.diagnostics import (
    SSARecorder,
    dense_recall,
    far_mass,
    router_metrics,
    router_recall,
    sample_query_blocks,
    selection_stats,
)
from ssa_kernels.hf import convert_to_ssa, doc_ids_from_positions, ssa_attention_forward

sys.path.insert(0, str(Path(__file__).parent))
from memprobe import MaxTensorProbe  # noqa: E402
from test_ssa import FULL, tiny_model  # noqa: E402
from test_train import run_inprocess  # noqa: E402

SPARSE = {"block_size": 16, "topk_blocks": 2, "local_window": 32, "top_nodes": 4}  # 1 sink + 2 routed + 2 local


def qk(bt, hq, hkv, t, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(bt, hq, t, d, generator=g), torch.randn(bt, hkv, t, d, generator=g)


def packed_doc_ids(bt, *lengths):
    return doc_ids_from_positions(torch.cat([torch.arange(n) for n in lengths]).expand(bt, -1))


def allowed_pairs(seq_len, doc_ids):
    """[Bt, T, T] dense causal within-document mask (tests only: T x T)."""
    t = torch.arange(seq_len)
    return (t[None, :] <= t[:, None]) & (doc_ids[:, :, None] == doc_ids[:, None, :])


def listed_keys(indices, block_size, seq_len):
    """[Bt, Hkv, T, T]: key s's block is listed for query t's block (tests only)."""
    bt, hkv, nb, _ = indices.shape
    hit = torch.zeros(bt, hkv, nb, nb + 1, dtype=torch.bool)
    hit.scatter_(-1, torch.where(indices >= 0, indices, nb), True)
    blk = torch.arange(seq_len) // block_size
    return hit[..., :nb][:, :, blk][..., blk]


# --- selection_stats ----------------------------------------------------------------------------


def test_selection_stats_by_hand():
    # T = 64, B = 16: 4 query blocks, one (batch, kv head)
    indices = torch.tensor([[[[0, -1], [0, 1], [2, -1], [0, 3]]]])
    routed = torch.tensor([[[[-1], [-1], [-1], [0]]]])
    st = {k: v.item() for k, v in selection_stats(indices, 16, 64, local_blocks=1, routed=routed).items()}
    # pairs: diagonal blocks 4 x 16*17/2 = 544, plus block 1 -> 0 and block 3 -> 0: 2 x 16*16 = 512
    assert st["attended_share"] == pytest.approx((544 + 512) / (64 * 65 / 2))
    # distances of the 6 listed blocks: 0, 16, 0, 0, 48, 0 tokens
    assert st["mean_distance"] == pytest.approx(64 / 6) and st["max_distance"] == 48
    assert st["far_share"] == pytest.approx(2 / 6)  # blocks 1 -> 0 and 3 -> 0 lie outside a 1-block window
    assert st["blocks_per_query"] == pytest.approx(6 / 4)
    assert st["routed_mean_distance"] == 48 and st["routed_max_distance"] == 48
    # a 2-block local window holds block 1 -> 0
    assert selection_stats(indices, 16, 64, local_blocks=2)["far_share"].item() == pytest.approx(1 / 6)


def test_selection_stats_partial_block_and_documents_by_hand():
    # T = 40, B = 16 (last block holds 8 tokens); documents [0, 20) and [20, 40)
    doc_ids = packed_doc_ids(1, 20, 20)
    indices = torch.tensor([[[[0, -1], [0, 1], [0, 2]]]])
    st = selection_stats(indices, 16, 40, doc_ids)
    # diagonal blocks: block 0: 16*17/2 = 136; block 1: tokens 16..19 (doc 0) see 1..4 keys (10), tokens
    # 20..31 (doc 1) see 1..12 (78); block 2: tokens 32..39 see 1..8 keys of block 2 (36).
    # off-diagonal: block 1 -> 0: 4 doc-0 rows x 16 keys = 64; block 2 -> 0: doc 1 has no key in block 0.
    attended = 136 + 10 + 78 + 36 + 64
    causal = 2 * (20 * 21 / 2)
    assert st["attended_share"].item() == pytest.approx(attended / causal)


@pytest.mark.parametrize("docs", [None, (40, 70, 63)])
@pytest.mark.parametrize("budget", [SPARSE, FULL])
def test_selection_stats_attended_share_matches_brute_force(docs, budget):
    t = 173
    q, k = qk(2, 4, 2, t, 8, seed=1)
    doc_ids = packed_doc_ids(2, *docs) if docs else None
    cfg = SSAConfig(**budget)
    sel = select_blocks(q, k, cfg, doc_ids)
    got = selection_stats(sel.indices, cfg.block_size, t, doc_ids)["attended_share"].item()
    allowed = allowed_pairs(t, doc_ids if docs else torch.zeros(2, t, dtype=torch.long))[:, None]  # (Bt, 1, T, T)
    want = (allowed & listed_keys(sel.indices, cfg.block_size, t)).sum().item() / (allowed.sum().item() * 2)
    assert got == pytest.approx(want, rel=1e-12)
    if budget is FULL:
        assert got == pytest.approx(1.0)


# --- far_mass and dense_recall ------------------------------------------------------------------


@pytest.mark.parametrize("docs", [None, (40, 70, 63)])
def test_far_mass_equals_sparse_attention_mass_beyond_the_window(docs):
    """Cross-check with sparse_attention itself: the mass of the far blocks of a row is
    exp(lse over the far blocks only - lse over all listed blocks)."""
    t, cfg = 173, SSAConfig(**SPARSE)
    q, k = qk(2, 4, 2, t, 8, seed=2)
    doc_ids = packed_doc_ids(2, *docs) if docs else None
    sel = select_blocks(q, k, cfg, doc_ids)
    blocks = [3, 6, 10]  # 10 is the partial last block
    got = far_mass(q, k, sel.indices, cfg.block_size, blocks, cfg.local_blocks, doc_ids)
    i = torch.arange(sel.indices.shape[2]).view(1, 1, -1, 1)
    far_only = torch.where(i - sel.indices >= cfg.local_blocks, sel.indices, -1)
    _, lse = sparse_attention(q, k, k, sel.indices, cfg.block_size, doc_ids)  # (Bt, Hq, T)
    _, lse_far = sparse_attention(q, k, k, far_only, cfg.block_size, doc_ids)
    share = torch.exp(lse_far - lse)  # 0 where no far key is visible
    want = torch.stack([share[:, :, b * 16 : min(b * 16 + 16, t)].mean() for b in blocks]).mean()
    assert 0 < got.item() < 1
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


@pytest.mark.parametrize("docs", [None, (40, 70, 63)])
def test_dense_recall_matches_a_dense_softmax_and_stays_below_the_oracle(docs):
    t, cfg = 173, SSAConfig(**SPARSE)
    q, k = qk(2, 4, 2, t, 8, seed=3)
    q = q * 3  # peaked attention: recall well away from the budget's share of keys
    doc_ids = packed_doc_ids(2, *docs) if docs else None
    sel = select_blocks(q, k, cfg, doc_ids)
    blocks = sample_query_blocks(sel.indices.shape[2], 6, seed=0)
    got = dense_recall(q, k, sel, cfg, blocks, doc_ids)
    # brute force: T x T probabilities, mass of the listed keys per row
    allowed = allowed_pairs(t, doc_ids if docs else torch.zeros(2, t, dtype=torch.long))[:, None]
    logits = (q @ k.repeat_interleave(2, 1).transpose(-1, -2)) * 8**-0.5
    p = torch.softmax(logits.masked_fill(~allowed, -torch.inf), -1)  # (Bt, Hq, T, T)
    listed = listed_keys(sel.indices, cfg.block_size, t).repeat_interleave(2, 1)
    row_mass = (p * listed).sum(-1)  # (Bt, Hq, T)
    want = torch.stack([row_mass[:, :, b * 16 : min(b * 16 + 16, t)].mean() for b in blocks]).mean()
    assert got["recall"].item() == pytest.approx(want.item(), rel=1e-5)
    assert got["recall"].item() < 1
    assert got["recall"].item() <= got["oracle_recall"].item() + 1e-12 <= 1 + 1e-9


def test_sampling_is_seeded_and_distinct():
    assert sample_query_blocks(100, 16, 0) == sample_query_blocks(100, 16, 0) != sample_query_blocks(100, 16, 1)
    assert len(set(sample_query_blocks(100, 16, 0))) == 16
    assert sample_query_blocks(5, 16, 0) == [0, 1, 2, 3, 4]


# --- the recorder -------------------------------------------------------------------------------


def test_recorder_restores_the_original_and_changes_nothing():
    assert AttentionInterface()["ssa"] is ssa_attention_forward
    model = convert_to_ssa(tiny_model("llama"), SSAConfig(**SPARSE))
    ids = torch.randint(0, 97, (2, 150))
    ref = model(ids).logits
    with SSARecorder(lambda call: call.selection.indices.shape) as rec:
        assert AttentionInterface()["ssa"] is not ssa_attention_forward
        out = model(ids).logits
    assert AttentionInterface()["ssa"] is ssa_attention_forward
    assert torch.equal(out, ref)
    assert rec.records == {0: (2, 2, 10, 5), 1: (2, 2, 10, 5)}  # layer -> [Bt, Hkv, nb, S]
    with pytest.raises(RuntimeError, match="inside"), SSARecorder(lambda call: None):
        raise RuntimeError("inside")
    assert AttentionInterface()["ssa"] is ssa_attention_forward


def test_router_metrics_flatten_layers_with_max_for_max_stats():
    records = {0: {"far_mass": torch.tensor(0.2), "max_distance": torch.tensor(64.0)}}
    records[1] = {"far_mass": torch.tensor(0.4), "max_distance": torch.tensor(32.0)}
    m = router_metrics(records)
    assert m["router/far_mass"] == pytest.approx(0.3) and m["router/max_distance"] == 64
    assert m["router/layer1/far_mass"] == pytest.approx(0.4) and router_metrics({}) == {}


# --- router_recall ------------------------------------------------------------------------------


def test_router_recall_is_one_at_full_budget():
    model = convert_to_ssa(tiny_model("llama"), SSAConfig(**FULL))
    pos = torch.cat([torch.arange(90), torch.arange(110)])[None]  # two packed documents
    r = router_recall(model, {"input_ids": torch.randint(0, 97, (1, 200)), "position_ids": pos})
    for layer in (0, 1):
        assert r[f"router/layer{layer}/recall"] == pytest.approx(1.0, abs=1e-6)
        assert r[f"router/layer{layer}/oracle_recall"] == pytest.approx(1.0, abs=1e-6)
    assert 0 < r["router/far_mass"] < 1  # the 2-block window holds only part of the mass


def test_router_recall_at_a_tiny_budget_is_below_its_oracle():
    model = convert_to_ssa(tiny_model("llama"), SSAConfig(**SPARSE))
    with torch.no_grad():  # peaked attention, so routing matters
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8)
    r = router_recall(model, {"input_ids": torch.randint(0, 97, (2, 256))}, num_query_blocks=8, seed=1)
    assert set(r) == {
        f"router/{p}{s}" for p in ("", "layer0/", "layer1/") for s in ("recall", "oracle_recall", "far_mass")
    }
    for p in ("", "layer0/", "layer1/"):
        assert 0 < r[f"router/{p}recall"] < 1
        assert r[f"router/{p}recall"] <= r[f"router/{p}oracle_recall"] + 1e-12 <= 1 + 1e-9


def test_router_recall_memory_is_linear_at_4k():
    """Only the sampled rows meet all keys: nothing near T x T is ever made (the largest tensor is the
    sparse reference's chunk of the forward itself)."""
    t = 4096
    model = convert_to_ssa(tiny_model("llama"), SSAConfig(**SPARSE))
    model.config.max_position_embeddings = t
    with MaxTensorProbe() as probe:
        r = router_recall(model, {"input_ids": torch.randint(0, 97, (1, t))}, num_query_blocks=16)
    assert 0 < r["router/recall"] <= r["router/oracle_recall"]
    assert probe.max_numel < t * t // 8, probe.max_op
    q, k = qk(1, 4, 2, t, 16, seed=4)
    cfg = SSAConfig(**SPARSE)
    sel = select_blocks(q, k, cfg)
    blocks = sample_query_blocks(sel.indices.shape[2], 16, 0)
    with MaxTensorProbe() as probe:
        dense_recall(q, k, sel, cfg, blocks)
        far_mass(q, k, sel.indices, cfg.block_size, blocks, cfg.local_blocks)
    assert probe.max_numel <= 2 * 32 * t, probe.max_op  # one query block: [Bt, Hkv, G*B, T]


# --- the trainer --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("corpus-cache"))


def metrics_rows(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_training_logs_router_stats_without_changing_the_run(tmp_path, cache_dir):
    # 8 blocks of 8 tokens at seq_len 64; 1 sink + 1 routed + 2 local blocks: part of the pairs
    small = {"block_size": 8, "topk_blocks": 1, "local_window": 16, "top_nodes": 4}
    ssa = ["attention=ssa", *(f"attention.ssa.{k}={v}" for k, v in small.items())]
    common = [*ssa, "train.steps=3", "train.grad_accum=2", "train.ckpt_every=0"]
    run_inprocess(tmp_path / "on", [*common, "logging.router_stats_every=2"], cache_dir)
    run_inprocess(tmp_path / "off", common, cache_dir)
    on, off = metrics_rows(tmp_path / "on"), metrics_rows(tmp_path / "off")
    assert [r["loss"] for r in on] == [r["loss"] for r in off]  # recording never touches training
    assert not any(k.startswith("router/") for r in off for k in r)
    assert not any(k.startswith("router/") for k in on[0])  # step 1: not due
    logged = on[1]
    for stat in ("attended_share", "mean_distance", "max_distance", "far_share", "far_mass"):
        assert f"router/{stat}" in logged
        assert all(f"router/layer{i}/{stat}" in logged for i in range(4))  # the tiny model has 4 layers
    assert 0 < logged["router/attended_share"] < 1 and 0 <= logged["router/far_mass"] <= 1
