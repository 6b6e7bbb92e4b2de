"""Router report (``train/router_report.py``): files written and readable, recall <= oracle <= 1,
histogram totals against an independent count of the selections, a full budget at recall 1, a router
forced onto the farthest blocks moving the histogram to the far bins (exact counts by hand), input
packing, and the CLI on a saved checkpoint against the in-process report."""

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ssa_kernels.diagnostics as diagnostics
from data import byte_tokenizer
from ssa_kernels import SSAConfig
from ssa_kernels.diagnostics import SSARecorder, distance_bin_edges, distance_histogram, share_at_least
from ssa_kernels.hf import convert_to_ssa
from train.router_report import pack_rows, read_texts, router_report, tiny_ssa_model, write_report

sys.path.insert(0, str(Path(__file__).parent))
from test_ssa import FULL  # noqa: E402
from tiny import tiny_hf_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SPARSE = {"block_size": 16, "topk_blocks": 2, "local_window": 32, "top_nodes": 4}  # 1 sink + 2 routed + 2 local
T = 512


def tiny_ssa(**ssa):
    return convert_to_ssa(tiny_hf_model("llama"), SSAConfig(**{**SPARSE, **ssa})).eval()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 97, (2, T), generator=torch.Generator().manual_seed(0))  # (Bt, T)


@pytest.fixture(scope="module")
def model():
    return tiny_ssa()


@pytest.fixture(scope="module")
def report(model, ids):
    return router_report(model, ids, num_query_blocks=0)  # every query block


def selection_counts(model, ids):
    """Per layer (routed, listed) selected entries, counted from the recorder's own selections."""
    with SSARecorder(lambda c: ((c.selection.routed >= 0).sum().item(), (c.selection.indices >= 0).sum().item())) as r:
        model.get_decoder()(input_ids=ids, use_cache=False)
    return r.records


def bin_of(d: int) -> int:
    """Log2 bin of a distance in blocks, by hand: 0 | 1-2 | 3-4 | 5-8 | ..."""
    return 0 if d == 0 else 1 if d <= 2 else math.ceil(math.log2(d))


def far_bins_share(report, min_tokens):
    hist = report["histogram"]
    far = sum(c for b, c in zip(hist["bins"], hist["routed"]) if b["lo"] >= min_tokens)
    return far / sum(hist["routed"])


def test_distance_histogram_and_shares_by_hand():
    assert distance_bin_edges(512, 16) == [0, 2, 4, 8, 16, 32] and distance_bin_edges(16, 16) == [0]
    assert distance_bin_edges(800, 16) == [0, 2, 4, 8, 16, 32, 64]  # 50 blocks: up to 49 back
    # T = 64, B = 16: distances of the 6 listed blocks are 0, 1, 0, 0, 3, 0 blocks
    indices = torch.tensor([[[[0, -1], [0, 1], [2, -1], [0, 3]]]])
    assert distance_histogram(indices, distance_bin_edges(64, 16)).tolist() == [4, 1, 1]
    assert share_at_least(indices, 16, 16).item() == pytest.approx(2 / 6)
    assert share_at_least(indices, 16, 48).item() == pytest.approx(1 / 6)
    assert share_at_least(torch.full((1, 1, 4, 2), -1), 16, 0).item() == 0.0  # nothing listed


def test_files_written_and_parse(report, tmp_path):
    written = write_report({"checkpoint": "tiny", "date": "today", "command": "x", **report}, tmp_path)
    data = json.loads((tmp_path / "router_report.json").read_text())
    assert {"checkpoint", "date", "command", "length", "per_layer", "mean", "histogram"} <= set(data)
    assert data["length"] == T and [r["layer"] for r in data["per_layer"]] == [0, 1]
    assert set(data["histogram"]) == {"bins", "routed", "all"}
    assert data["histogram"]["bins"][0]["label"] == "0" and data["histogram"]["bins"][-1]["hi"] == T - 16
    md = (tmp_path / "router_report.md").read_text().splitlines()
    rows = [line for line in md if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows[1:4]] == ["0", "1", "mean"]
    assert float(rows[3].split("|")[2]) == pytest.approx(data["mean"]["recall"], abs=1e-3)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "png" not in written
    else:
        assert (tmp_path / "router_reach.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_recall_at_most_oracle_at_most_one(report):
    for row in [*report["per_layer"], report["mean"]]:
        assert 0 < row["recall"] <= row["oracle_recall"] + 1e-9 <= 1 + 2e-9
        assert row["recall_ratio"] == pytest.approx(row["recall"] / row["oracle_recall"])
    assert report["mean"]["recall"] < 0.9  # 5 of up to 32 blocks: a sparse selection, not the ceiling


def test_histogram_counts_every_selected_entry(model, ids, report):
    counts = selection_counts(model, ids)
    for row in report["per_layer"]:
        routed, listed = counts[row["layer"]]
        assert sum(row["histogram"]["routed"]) == row["routed_blocks"] == routed
        assert sum(row["histogram"]["all"]) == row["listed_blocks"] == listed
    assert sum(report["histogram"]["routed"]) == sum(r for r, _ in counts.values())
    assert sum(report["histogram"]["all"]) == sum(a for _, a in counts.values())
    nb = T // 16
    assert report["histogram"]["all"][0] == 2 * 2 * 2 * nb  # the diagonal: layers x rows x kv heads x blocks
    assert report["histogram"]["routed"][0] == 0  # routed blocks lie beyond the local window
    assert report["mean"]["routed_far_share"] == 1.0


def test_full_budget_recall_is_one(ids):
    rep = router_report(tiny_ssa(**FULL), ids[:1], num_query_blocks=8)
    for row in [*rep["per_layer"], rep["mean"]]:
        assert row["recall"] == pytest.approx(1.0, abs=1e-6) and row["oracle_recall"] == pytest.approx(1.0, abs=1e-6)
        assert row["attended_share"] == pytest.approx(1.0)


def far_selection(sel, cfg: SSAConfig, nb: int):
    """``sel`` with each query block's routed blocks replaced by the farthest it may route to (the first
    ``topk`` blocks after the sinks, before the local window)."""
    bt, hkv, _, topk = sel.routed.shape
    routed = torch.full_like(sel.routed, -1)
    member = torch.zeros(bt, hkv, nb, nb, dtype=torch.bool)
    for i in range(nb):
        far = list(range(cfg.sink_blocks, min(cfg.sink_blocks + topk, i - cfg.local_blocks + 1)))
        routed[:, :, i, : len(far)] = torch.tensor(far, dtype=torch.long)
        fixed = list(range(min(cfg.sink_blocks, i + 1))) + list(range(max(0, i - cfg.local_blocks + 1), i + 1))
        member[:, :, i, far + fixed] = True
    blocks = torch.where(member, torch.arange(nb), nb).sort(-1).values[..., : sel.indices.shape[-1]]
    return dataclasses.replace(sel, indices=torch.where(blocks < nb, blocks, -1), routed=routed)


def test_router_forced_far_moves_the_histogram(model, ids, report, monkeypatch):
    cfg, nb = SSAConfig(**SPARSE), T // 16
    original = diagnostics.select_blocks
    monkeypatch.setattr(diagnostics, "select_blocks", lambda *a, **kw: far_selection(original(*a, **kw), cfg, nb))
    forced = router_report(model, ids, num_query_blocks=0)
    # exact counts by hand: query block i routes to blocks 1 and 2 (when before its window)
    want = [0] * len(distance_bin_edges(T, 16))
    for i in range(nb):
        for j in range(1, min(3, i - 1)):
            want[bin_of(i - j)] += 2 * 2 * 2  # layers x rows x kv heads
    assert forced["histogram"]["routed"] == want
    assert forced["mean"]["routed_quarter_share"] == pytest.approx(45 / 57)  # 45 of 57 per head reach >= 8 blocks
    assert far_bins_share(forced, T // 4) > far_bins_share(report, T // 4) + 0.2
    assert forced["mean"]["routed_mean_distance"] > report["mean"]["routed_mean_distance"] + 64
    for row in forced["per_layer"]:
        assert row["recall"] <= row["oracle_recall"] + 1e-9 <= 1 + 2e-9


def test_pack_rows_reads_samples_and_text(tmp_path):
    rows = [{"input": "ab", "answer_prefix": "c"}, {"prompt": "de"}, {"text": "fgh"}]
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "t.txt").write_text("xyz")
    tok = byte_tokenizer()
    texts = list(read_texts([str(tmp_path / "s.jsonl"), str(tmp_path / "t.txt")]))
    assert texts == ["abc", "de", "fgh", "xyz"]
    eos = tok.eos_token_id
    got = pack_rows(texts, tok, 5, rows=2)
    assert got.tolist() == [[97, 98, 99, eos, 100], [101, eos, 102, 103, 104]]
    with pytest.raises(ValueError, match="holds 15 tokens"):
        pack_rows(texts, tok, 9, rows=2)


def test_cli_on_a_saved_checkpoint(tmp_path):
    text = "".join(f"def f{i}(x):\n    return x * {i} + sum(range({i}))\n\n" for i in range(40))
    (tmp_path / "code.txt").write_text(text)
    model = tiny_ssa_model(256, seed=3)
    model.save_pretrained(tmp_path / "ckpt")
    byte_tokenizer().save_pretrained(tmp_path / "ckpt")
    cmd = [sys.executable, "-m", "train.router_report", "--checkpoint", str(tmp_path / "ckpt"), "--input",
           str(tmp_path / "code.txt"), "--length", "256", "--out", str(tmp_path / "out"), "--num-query-blocks", "4",
           "--seed", "1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads((tmp_path / "out" / "router_report.json").read_text())
    assert data["checkpoint"] == str(tmp_path / "ckpt") and "--length 256" in data["command"]
    assert (tmp_path / "out" / "router_report.md").is_file()
    # the same numbers as the in-process report on the same weights and tokens
    want = router_report(model.eval(), pack_rows([text], byte_tokenizer(), 256), num_query_blocks=4, seed=1)
    assert data["query_blocks"] == want["query_blocks"] and data["histogram"] == want["histogram"]
    for got, ref in zip(data["per_layer"], want["per_layer"]):
        assert got["recall"] == pytest.approx(ref["recall"], abs=1e-6)
        assert got["oracle_recall"] == pytest.approx(ref["oracle_recall"], abs=1e-6)
