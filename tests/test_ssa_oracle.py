"""``attention.ssa.router=oracle``: each query block routes the key blocks of the layer's own dense attention mass.
The selection against a loop over the definition, ssa_attention's output against sparse attention over the blocks a
brute-force T x T softmax ranks first (reference and Triton backends), every block routed = dense attention, the
config and HF-glue refusals, and scripts/probe_answers.py --oracle on a dense checkpoint."""

import json
import math

import pytest
import torch

from ssa_kernels import SSAConfig, sparse_attention, ssa_attention
from ssa_kernels.hf import convert_to_ssa
from ssa_kernels.selector.reference import _union, routed_bounds, select_by_scores
from tests.scripts_loader import load_script
from tests.test_ssa_distill import brute_mass, packed, qk

CFG = dict(block_size=16, topk_blocks=3, local_window=32, router="oracle", routing="none")


@pytest.mark.parametrize("docs", [None, (70, 103)])
def test_select_by_scores_takes_the_top_routable_blocks(docs):
    t, cfg = 173, SSAConfig(**CFG)
    nb = -(-t // cfg.block_size)
    doc_ids = packed(2, *docs) if docs else None
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (2, 2, nb, nb), generator=g).float()  # many ties: the lower index wins
    sel = select_by_scores(scores, t, cfg, doc_ids)
    lo, hi = routed_bounds(doc_ids, t, cfg, scores.device)
    for b in range(2):
        for h in range(2):
            for i in range(nb):
                js = list(range(int(lo[min(b, lo.shape[0] - 1), i]), max(int(hi[i]), 0)))
                want = sorted(sorted(js, key=lambda j: (-scores[b, h, i, j].item(), j))[: cfg.topk_blocks])
                got = [j for j in sel.routed[b, h, i].tolist() if j >= 0]
                assert got == want, (b, h, i)
                assert sel.routed[b, h, i].tolist() == want + [-1] * (cfg.topk_blocks - len(want))
                assert sel.routed_scores[b, h, i, : len(want)].tolist() == [scores[b, h, i, j].item() for j in want]
                assert sel.candidates[b, h, i] == len(js)
    assert torch.equal(sel.indices, _union(sel.routed, cfg))


@pytest.mark.parametrize("rows", ["mean", "max"])
@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("docs", [None, (90, 83)])
def test_oracle_attends_the_blocks_of_the_dense_mass(backend, docs, rows):
    """The oracle routes the top blocks of the dense mass, the rows' mean or (distill_rows=max) their largest."""
    t, cfg = 173, SSAConfig(**CFG, distill_rows=rows)
    q, k = qk(2, 4, 2, t, 16, seed=3)
    v = torch.randn(2, 2, t, 16, generator=torch.Generator().manual_seed(4))
    doc_ids = packed(2, *docs) if docs else None
    out = ssa_attention(q, k, v, cfg, doc_ids=doc_ids, backend=backend)
    sel = select_by_scores(brute_mass(q, k, cfg.block_size, doc_ids, rows=rows).float(), t, cfg, doc_ids)
    flip = select_by_scores(brute_mass(q, k, cfg.block_size, doc_ids, rows={"max": "mean"}.get(rows, "max")).float(),
                            t, cfg, doc_ids)  # fmt: skip
    assert not torch.equal(sel.routed, flip.routed)  # mean and max pick differently: the test tells them apart
    want, _ = sparse_attention(q, k, v, sel.indices, cfg.block_size, doc_ids=doc_ids)
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-5)
    other = ssa_attention(q, k, v, SSAConfig(**{**CFG, "router": "attention", "routing": "straight_through"}),
                          doc_ids=doc_ids, backend="reference")  # fmt: skip
    assert (other - out).abs().max() > 1e-3  # the pyramid's own pick differs: the test can tell them apart


def test_oracle_with_every_block_routed_is_dense_attention():
    t = 150
    q, k = qk(1, 4, 2, t, 16, seed=5)
    v = torch.randn(1, 2, t, 16, generator=torch.Generator().manual_seed(6))
    out = ssa_attention(q, k, v, SSAConfig(**{**CFG, "topk_blocks": 10}), backend="reference")
    dense = torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                                                             is_causal=True)  # fmt: skip
    torch.testing.assert_close(out, dense, rtol=1e-4, atol=1e-5)


def test_oracle_refusals_name_the_setting():
    with pytest.raises(ValueError, match="attention.routing=none"):
        SSAConfig(**{**CFG, "routing": "straight_through"}).validate()
    with pytest.raises(ValueError, match="attention.router="):
        SSAConfig(**{**CFG, "router": "best"}).validate()
    SSAConfig(**CFG, far_distance=64).validate()  # far blocks: the mass of the attention SSA computes
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)  # fmt: skip
    model = convert_to_ssa(AutoModelForCausalLM.from_config(config), SSAConfig(**CFG)).eval()
    ids = torch.randint(0, 64, (1, 100), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits  # a full forward runs
        assert torch.isfinite(logits).all()
        with pytest.raises(ValueError, match="router=oracle"):
            model(input_ids=ids, use_cache=True)  # a cached prefill would decode next: refused
        from ssa_kernels.diagnostics import SSARecorder

        with pytest.raises(NotImplementedError, match="router=oracle"), SSARecorder(lambda call: call):
            model(input_ids=ids, use_cache=False)  # the diagnostics would record the pyramid's pick instead


@pytest.mark.slow
def test_probe_answers_with_the_oracle_on_a_dense_checkpoint(tmp_path, capsys):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    run = tmp_path / "dense"
    cmd = [sys.executable, "-m", "train", "model=tiny", "attention=dense", "train.seq_len=128", "train.steps=1",
           "data.synthetic.ratio=1.0", "data.synthetic.lengths=[]", "data.synthetic.tasks=[copy]",
           "train.schedule.warmup_steps=1", "logging.wandb=disabled", f"hydra.run.dir={run}"]  # fmt: skip
    subprocess.run(cmd, cwd=repo, check=True, capture_output=True)
    probe = load_script("probe_answers")
    model, _, _ = probe.load(str(run), oracle=4, local_window=64)
    cfg = model.config.ssa
    assert (cfg["router"], cfg["routing"], cfg["topk_blocks"], cfg["local_window"]) == ("oracle", "none", 4, 64)
    assert probe.load(str(run), oracle=4, oracle_rows="max")[0].config.ssa["distill_rows"] == "max"
    probe.main([str(run), "--oracle", "4", "--local-window", "64", "--tasks", "niah_multikey_2", "--length", "1024",
                "--samples", "2", "--oracle-rows", "max"])  # fmt: skip
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert row["oracle"] == 4 and row["oracle_rows"] == "max" and row["samples"] == 2
    assert math.isfinite(row["answer_loss"])
    with pytest.raises(SystemExit):
        probe.main([str(run), "--oracle", "4", "--ssa-topk", "4"])
