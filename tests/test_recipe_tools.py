"""scripts/sweep_recipes.py (several trainings side by side, a follow-on stage from one of them, probes) and
scripts/probe_answers.py's --ssa-topk, on CPU with the tiny model."""

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from tests.scripts_loader import load_script

TINY = "model=tiny attention=dense train.seq_len=256 train.micro_batch=2 train.steps=3 data.synthetic.ratio=1.0 "
TINY += "data.synthetic.lengths=[] data.synthetic.tasks=[copy] train.schedule.warmup_steps=1 logging.log_every=1"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """One sweep: a dense run a, an SSA run s (lr 3e-3) side by side, then a continued as SSA; probes."""
    out = tmp_path_factory.mktemp("sweep")
    load_script("sweep_recipes").main(["--out", str(out), "--minutes", "5", "--run", "a", TINY,
                                "--run", "s", TINY.replace("attention=dense", "attention=ssa") + " train.optimizer.lr=3e-3",
                                "--then", "a", "attention=ssa train.seq_len=256 train.micro_batch=1 train.steps=2 "
                                "data.synthetic.lengths=[] data.synthetic.ratio=1.0 data.synthetic.tasks=[copy]",
                                "--then-minutes", "5", "--probe-tasks", "copy", "--probe-lengths", "128",
                                "--probe-samples", "2"])  # fmt: skip
    return out


def test_sweep_trains_side_by_side_continues_one_and_probes(sweep):
    doc = json.loads((sweep / "sweep.json").read_text())
    assert set(doc) == {"device", "date", "command", "runs"}
    runs = {r["name"]: r for r in doc["runs"]}
    assert list(runs) == ["a", "s", "a_then"]
    assert runs["a"]["steps"] == runs["s"]["steps"] == 3 and runs["a_then"]["steps"] == 2
    for r in runs.values():
        (row,) = r["probe"]
        assert row["task"] == "copy" and row["length"] == 128 and row["samples"] == 2
        assert math.isfinite(row["answer_loss"]) and math.isfinite(row["first_copy_loss"])
    assert "train.optimizer.lr=3e-3" in runs["s"]["overrides"]
    # the follow-on stage loaded run a's last checkpoint and trained it as SSA
    cfg = (sweep / "a_then" / "config.yaml").read_text()
    assert str(sweep / "a" / "checkpoints" / "step_00000003" / "model") in cfg
    config = json.loads(next((sweep / "a_then" / "checkpoints").glob("step_*/model/config.json")).read_text())
    assert config["ssa"]["topk_blocks"] > 0


def test_probe_with_another_routed_budget_keeps_the_trained_routers(sweep):
    probe = load_script("probe_answers")
    base, _, _ = probe.load(str(sweep / "s"))
    other, _, _ = probe.load(str(sweep / "s"), ssa_topk=3)
    assert base.config.ssa["topk_blocks"] != 3 and other.config.ssa["topk_blocks"] == 3
    routers = {n: p for n, p in base.named_parameters() if ".ssa_router." in n}
    assert routers  # the learned routers, loaded from the checkpoint, are kept with the new budget
    for n, p in other.named_parameters():
        if n in routers:
            assert torch.equal(p, routers[n]), n
    assert len([n for n, _ in other.named_parameters() if ".ssa_router." in n]) == len(routers)
    with pytest.raises(SystemExit, match="not an SSA model"):
        probe.load(str(sweep / "a"), ssa_topk=3)


def test_probe_runs_several_lengths_with_one_load(sweep, capsys):
    probe = load_script("probe_answers")
    probe.main([str(sweep / "s"), "--tasks", "niah_single_1", "--length", "1024", "1100", "--samples", "1"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [(r["task"], r["length"]) for r in rows] == [("niah_single_1", 1024), ("niah_single_1", 1100)]
    assert all(math.isfinite(r["answer_loss"]) and 0 <= r["exact"] <= 1 for r in rows)
    assert torch.is_grad_enabled()  # main() leaves the process's grad mode alone


def test_rope_distance_probe_scores_each_gap(tmp_path):
    rope = load_script("rope_distance_probe")
    x, y, lengths = rope.batch(4, 5, 5, torch.Generator().manual_seed(0))
    for row, lab, n in zip(x, y, lengths):  # string, 5 filler tokens, separator, the string again (labelled)
        assert n == int((lab != -100).sum())
        assert row[n + 5] == rope.SEP and torch.equal(row[:n], row[n + 6 : 2 * n + 6])
        assert (row[n : n + 5] >= rope.FILL).all() and torch.equal(lab[n + 6 : 2 * n + 6], row[:n])
    # oracle routing: causal; the last 3 positions and the row's string (here 2 tokens), nothing else
    mask = rope.oracle_mask(8, [2], 3)[0, 0]
    expect = torch.tensor([[j <= i and (i - j < 3 or j < 2) for j in range(8)] for i in range(8)])
    assert torch.equal(mask, expect)
    out = tmp_path / "rope.jsonl"
    rope.main(["--theta", "1000", "--steps", "2", "--max-gap", "4", "--json", str(out)])
    rope.main(["--theta", "1e8", "--steps", "2", "--max-gap", "4", "--oracle-window", "4", "--json", str(out)])
    rope.main(["--theta", "1e8", "--steps", "2", "--max-gap", "4", "--oracle-window", "4", "--eval-gaps", "3", "9",
               "--json", str(out)])  # fmt: skip
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["oracle_window"] for r in rows] == [0, 4, 4]
    assert list(rows[2]["acc"]) == ["3", "9"]
    for row in rows:
        assert list(row["acc"]) in (["4", "16", "64", "256"], ["3", "9"])
        assert all(0 <= a <= 1 for a in row["acc"].values())
        assert row["steps"] == 2 and math.isfinite(row["train_loss"])
    # the row-by-row scoring (memory at long gaps) sees what the whole batch sees: padding is only at the end
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=rope.VOCAB + 16, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128)  # fmt: skip
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    x, y, lengths = rope.batch(4, 7, 7, torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = rope.forward(model, x, lengths, 4).logits
        for r in range(4):
            one = rope.forward(model, x[r : r + 1], lengths[r : r + 1], 4).logits[0]
            n = int((y[r] != -100).nonzero().max()) + 1
            torch.testing.assert_close(one[:n], whole[r, :n], atol=1e-5, rtol=1e-5)
    # --nope-layers: with every layer NoPE the logits ignore position_ids; with RoPE they do not
    ids, pos = torch.randint(0, rope.VOCAB, (1, 12)), torch.arange(12)[None]
    shuffled = torch.randperm(12, generator=torch.Generator().manual_seed(0))[None]
    with torch.no_grad():
        assert not torch.allclose(
            model(input_ids=ids, position_ids=pos).logits, model(input_ids=ids, position_ids=shuffled).logits
        )
        model.config.nope_layers = [0]
        rope.apply_nope_layers(model)
        a, b = model(input_ids=ids, position_ids=pos).logits, model(input_ids=ids, position_ids=shuffled).logits
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
