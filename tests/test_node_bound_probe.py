"""scripts/node_bound_probe.py end to end on a few steps: each trained model evaluated with both node scores, the
setting in the model's config at each evaluation (read by every forward)."""

import json

from tests.scripts_loader import load_script


def test_probe_evaluates_both_node_scores_and_writes_its_json(tmp_path, monkeypatch):
    probe = load_script("node_bound_probe")
    seen = []
    real = probe.evaluate

    def evaluate(model, cfg, length, num_keys, n):
        seen.append(model.config.ssa["node_score"])
        return real(model, cfg, length, num_keys, n=n)

    monkeypatch.setattr(probe, "evaluate", evaluate)
    out = tmp_path / "probe.json"
    probe.main(["--seeds", "0", "--steps", "2", "--lengths", "256", "1024", "--beam-mins", "1", "--samples", "4",
                "--json", str(out)])  # fmt: skip
    rows = json.loads(out.read_text())["results"]
    assert [(r["length"], r["node_score"]) for r in rows] == [(256, "mean"), (256, "bound"), (1024, "mean"),
                                                              (1024, "bound")]  # fmt: skip
    assert seen == ["mean", "bound", "mean", "bound"]
    assert all(0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["hit_rate"] <= 1.0 for r in rows)
