"""scripts/node_bound_probe.py end to end on a few steps: each trained model evaluated with both node scores (and
with --leaf-scores both block scores), the setting in the model's config at each evaluation (read by every forward);
block_retrieval's diluted needles (--needle-tokens)."""

import json

import pytest
import torch

from data.tasks import FILLER, block_retrieval
from tests.scripts_loader import load_script


def test_probe_evaluates_both_node_scores_and_writes_its_json(tmp_path, monkeypatch):
    probe = load_script("node_bound_probe")
    seen = []
    real = probe.evaluate

    def evaluate(model, cfg, length, num_keys, n, needle_tokens, distractors):
        seen.append(model.config.ssa["node_score"])
        return real(model, cfg, length, num_keys, n=n, needle_tokens=needle_tokens, distractors=distractors)

    monkeypatch.setattr(probe, "evaluate", evaluate)
    out = tmp_path / "probe.json"
    probe.main(["--seeds", "0", "--steps", "2", "--lengths", "256", "1024", "--beam-mins", "1", "--samples", "4",
                "--json", str(out)])  # fmt: skip
    rows = json.loads(out.read_text())["results"]
    assert [(r["length"], r["node_score"]) for r in rows] == [(256, "mean"), (256, "bound"), (1024, "mean"),
                                                              (1024, "bound")]  # fmt: skip
    assert seen == ["mean", "bound", "mean", "bound"]
    assert all(0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["hit_rate"] <= 1.0 for r in rows)


def test_probe_pairs_leaf_scores_on_diluted_needles_among_distractors(tmp_path, monkeypatch):
    probe = load_script("node_bound_probe")
    seen = []
    real = probe.evaluate

    def evaluate(model, cfg, length, num_keys, n, needle_tokens, distractors):
        seen.append((model.config.ssa["node_score"], model.config.ssa["leaf_score"], needle_tokens, distractors))
        return real(model, cfg, length, num_keys, n=n, needle_tokens=needle_tokens, distractors=distractors)

    monkeypatch.setattr(probe, "evaluate", evaluate)
    out = tmp_path / "probe.json"
    probe.main(["--seeds", "0", "--steps", "2", "--lengths", "256", "--beam-mins", "1", "--samples", "4",
                "--node-scores", "bound", "--leaf-scores", "mean", "bound", "--needle-tokens", "2", "--distractors",
                "--json", str(out)])  # fmt: skip
    rows = json.loads(out.read_text())["results"]
    assert [(r["node_score"], r["leaf_score"], r["needle_tokens"]) for r in rows] == [
        ("bound", "mean", 2), ("bound", "bound", 2)]  # fmt: skip
    assert seen == [("bound", "mean", 2, True), ("bound", "bound", 2, True)]


def test_probe_trains_with_other_ssa_settings(tmp_path, monkeypatch):
    """--train-ssa KEY=VALUE reaches train_block_retrieval's ssa settings (ints as ints) and each JSON row; a value
    without '=' is refused."""
    probe = load_script("node_bound_probe")
    got = []
    real = probe.train_block_retrieval

    def train(*args, ssa=None, **kwargs):
        got.append(ssa)
        return real(*args, ssa=ssa, **kwargs)

    monkeypatch.setattr(probe, "train_block_retrieval", train)
    out = tmp_path / "probe.json"
    probe.main(["--seeds", "0", "--steps", "2", "--lengths", "256", "--beam-mins", "1", "--samples", "4",
                "--node-scores", "bound", "--train-ssa", "distill_score=bound", "beam_min=3",
                "--json", str(out)])  # fmt: skip
    assert got == [{"distill_score": "bound", "beam_min": 3}]
    assert json.loads(out.read_text())["results"][0]["train_ssa"] == got[0]
    with pytest.raises(SystemExit):
        probe.main(["--seeds", "0", "--steps", "2", "--train-ssa", "distill_score", "--json", str(out)])


@pytest.mark.parametrize("needle_tokens", [0, 2, 5])
def test_block_retrieval_needles_of_a_few_tokens(needle_tokens):
    ids, value, needle = block_retrieval(32, 256, 16, torch.Generator().manual_seed(0), needle_tokens=needle_tokens)
    for row, v, j in zip(ids, value.tolist(), needle.tolist()):
        block = row[j * 16 : (j + 1) * 16].tolist()
        key = row[-1].item()  # the last block repeats the key
        special = [i for i, t in enumerate(block) if t >= FILLER]
        want = needle_tokens or 16
        assert len(special) == want and special == list(range(special[0], special[0] + want))  # one run
        assert [block[i] for i in special] == [key if n % 2 == 0 else v for n in range(want)]
        assert sum(t >= FILLER for t in row[:240].tolist()) == want  # nowhere else before the last block
    with pytest.raises(ValueError, match="needle_tokens"):
        block_retrieval(1, 256, 16, torch.Generator(), needle_tokens=17)


def test_block_retrieval_distractors_are_other_keys_in_every_other_candidate_block():
    n, seq_len, bs, local = 16, 256, 16, 2
    ids, value, needle = block_retrieval(n, seq_len, bs, torch.Generator().manual_seed(1), needle_tokens=2,
                                         distractors=True)  # fmt: skip
    for row, v, j in zip(ids, value.tolist(), needle.tolist()):
        key = row[-1].item()
        for b in range(1, seq_len // bs - local - 1):
            block = row[b * bs : (b + 1) * bs].tolist()
            special = [i for i, t in enumerate(block) if t >= FILLER]
            assert len(special) == 2 and special[1] == special[0] + 1, b  # one run of two tokens
            k, val = block[special[0]], block[special[1]]
            assert (k == key and val == v) if b == j else (k != key and 64 <= k < 96 and 96 <= val < 128), b
        assert sum(t == key for t in row[:-bs].tolist()) == 1  # the asked key only in the needle
    with pytest.raises(ValueError, match="distractors"):
        block_retrieval(1, 256, 16, torch.Generator(), distractors=True)
