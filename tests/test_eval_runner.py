"""The evaluation runner (train/eval.py): the harness can fail (an oracle scores 100, a random guesser near
0), greedy decoding runs end to end through the SSA decode path, outputs parse, bad config names the key."""

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from transformers import AutoConfig, AutoModelForCausalLM

import ssa_kernels.decode
from data import byte_tokenizer
from ssa_kernels import SSAConfig
from ssa_kernels.hf import convert_to_ssa
from train.config import AttentionConfig, ConfigError, EvalConfig
from train.eval import CONF_DIR, evaluate, to_eval_config

REPO = Path(__file__).resolve().parent.parent
SMALL_SSA = SSAConfig(block_size=16, topk_blocks=2, local_window=32, top_nodes=4)
TASKS = ["niah_single_1", "niah_multikey_2"]  # exact RULER tasks: noise and distractor-needle haystacks
ROW_KEYS = {"task", "length", "depth", "seed", "score", "pred", "answers", "decode", "prompt_tokens", "new_tokens"}


def save_tiny(path: Path, ssa: bool) -> Path:
    """A 2-layer random-init Llama over the byte tokenizer, saved with its tokenizer (SSA: with routers)."""
    tok = byte_tokenizer()
    cfg = AutoConfig.for_model(
        "llama", vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    if ssa:
        convert_to_ssa(model, SMALL_SSA)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("dense"), ssa=False)


@pytest.fixture(scope="module")
def ssa_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("ssa"), ssa=True)


def eval_config(out_dir, checkpoint=None, **kw) -> EvalConfig:
    base = dict(tasks=TASKS, lengths=["512", "1K"], depths=[0.25, 0.75], samples=1, progress=False)
    return EvalConfig(
        checkpoint=None if checkpoint is None else str(checkpoint), out_dir=str(out_dir), **{**base, **kw}
    )


def test_oracle_scores_100_and_writes_json_markdown_heatmap(tmp_path, dense_dir):
    tasks = ["niah_single_1", "niah_single_2"]  # niah_single_2's essay haystack is a local substitute
    res = evaluate(eval_config(tmp_path, dense_dir, tasks=tasks, samples=2, answer_fn="oracle"))
    assert len(res["results"]) == 2 * 2 * 2 * 2  # tasks x lengths x depths x samples
    assert all(r["score"] == 100.0 for r in res["results"])
    assert res["label"] == "RULER-offline" and res["answer_fn"] == "oracle_answer"

    saved = json.loads((tmp_path / "results.json").read_text())
    assert {"checkpoint", "date", "command", "label", "results", "summary"} <= set(saved)
    assert saved["checkpoint"] == str(dense_dir)
    assert ROW_KEYS <= set(saved["results"][0])
    assert {(r["task"], r["length"], r["depth"], r["seed"]) for r in saved["results"]} == {
        (t, L, d, s) for t in tasks for L in (512, 1024) for d in (0.25, 0.75) for s in (0, 1)
    }
    s = saved["summary"]
    assert s["task_length"] == {t: {"512": 100.0, "1024": 100.0} for t in tasks}
    assert s["length"] == {"512": 100.0, "1024": 100.0} and s["effective_length"] == 1024
    assert s["niah_depth_length"] == {"0.25": {"512": 100.0, "1024": 100.0}, "0.75": {"512": 100.0, "1024": 100.0}}

    md = (tmp_path / "results.md").read_text()
    assert "| task | 512 | 1K |" in md and "| niah_single_2 | 100.0 | 100.0 |" in md
    assert "| **average** | **100.0** | **100.0** |" in md and "Effective length" in md and "1K" in md

    png = tmp_path / "niah_heatmap.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pytest.importorskip("matplotlib")
    import matplotlib.image

    assert matplotlib.image.imread(str(png)).ndim == 3


def test_random_guesser_scores_near_zero_and_the_hook_takes_a_function(tmp_path, dense_dir):
    res = evaluate(eval_config(tmp_path / "random", dense_dir, answer_fn="random"))
    scores = [r["score"] for r in res["results"]]
    assert len(scores) == 8 and sum(scores) / len(scores) < 10
    assert res["label"] == "RULER" and res["summary"]["effective_length"] == 0
    assert "none" in (tmp_path / "random" / "results.md").read_text()

    seen = []
    res = evaluate(eval_config(tmp_path / "fn", dense_dir, samples=1), answer_fn=lambda s: seen.append(s) or "")
    assert len(seen) == 8 and all(r["score"] == 0.0 for r in res["results"])  # an empty answer scores 0


def test_a_wrong_answer_row_says_what_it_read(tmp_path, dense_dir):
    """niah_multikey_1 (essay haystack, three distractor needles): an answer that reads another needle's value is
    marked in_prompt; the gold value with one digit changed is not, with 6 of its 7 characters right; a right
    answer's row has no miss."""

    def distractor(s):
        other = next(t for t, gold in zip(s.metadata["needles"], s.metadata["gold"]) if not gold)
        return " " + other.rsplit(" ", 1)[1]  # "... is: 7752784." -> " 7752784."

    def miscopy(s):
        return f" {int(s.answers[0][0]) % 9 + 1}{s.answers[0][1:]}."

    config = dict(tasks=["niah_multikey_1"], lengths=["1K"], samples=1)
    for fn, in_prompt in ((distractor, True), (miscopy, False)):
        res = evaluate(eval_config(tmp_path / fn.__name__, dense_dir, **config), answer_fn=fn)
        assert len(res["results"]) == 2
        for r in res["results"]:
            assert r["score"] == 0.0 and r["miss"]["in_prompt"] is in_prompt
            assert r["miss"]["read"] == r["pred"].strip(" .")
        if fn is miscopy:
            assert {r["miss"]["chars_right"] for r in res["results"]} == {round(6 / 7, 3)}
    res = evaluate(eval_config(tmp_path / "oracle", dense_dir, answer_fn="oracle", **config))
    assert all(r["score"] == 100.0 and "miss" not in r for r in res["results"])


def test_a_killed_evaluation_keeps_every_finished_sample_in_samples_jsonl(tmp_path, dense_dir):
    """samples.jsonl gets each row when it is scored: an evaluation stopped mid-way (here the answer
    function raises on the 4th sample, as a time limit would kill it) keeps the 3 finished rows and
    leaves no results.json; a finished one journals exactly the rows of results.json."""
    seen = []

    def dies_on_the_fourth(sample):
        seen.append(sample)
        if len(seen) == 4:
            raise KeyboardInterrupt("killed")
        return sample.answers[0] if len(seen) % 2 else "wrong"

    with pytest.raises(KeyboardInterrupt):
        evaluate(eval_config(tmp_path / "killed", dense_dir, answer_fn=None), answer_fn=dies_on_the_fourth)
    kept = [json.loads(line) for line in (tmp_path / "killed" / "samples.jsonl").read_text().splitlines()]
    assert [r["score"] for r in kept] == [100.0, 0.0, 100.0]
    assert [(r["length"], r["depth"]) for r in kept] == [(512, 0.25), (512, 0.75), (512, 0.25)]
    assert not (tmp_path / "killed" / "results.json").exists()

    res = evaluate(eval_config(tmp_path / "done", dense_dir, answer_fn="oracle"))
    journal = [json.loads(line) for line in (tmp_path / "done" / "samples.jsonl").read_text().splitlines()]
    assert journal == res["results"] == json.loads((tmp_path / "done" / "results.json").read_text())["results"]
    assert not list((tmp_path / "done").glob("*.tmp"))


def test_greedy_decoding_runs_through_the_ssa_decode_path(tmp_path, ssa_dir, monkeypatch):
    """An SSA checkpoint loads with its routers (checkpoint dir, attention=null: as saved), prefills with
    sparse attention and decodes every new token after the first with one SSA decode step per layer."""
    calls = []
    step = ssa_kernels.decode.ssa_decode_step

    def counting_step(*args, **kw):  # each decode step of each layer takes >= 20 ms: decode_s must hold them
        calls.append(1)
        time.sleep(0.02)
        return step(*args, **kw)

    monkeypatch.setattr(ssa_kernels.decode, "ssa_decode_step", counting_step)
    res = evaluate(eval_config(tmp_path, ssa_dir, tasks=TASKS[:1], depths=[0.5], max_new_tokens=4))
    assert res["attention"] == "ssa" and res["ssa"]["topk_blocks"] == 2 and res["answer_fn"] is None
    rows = res["results"]
    assert [r["length"] for r in rows] == [512, 1024]
    for r in rows:
        assert ROW_KEYS <= set(r) and r["decode"] == "ssa" and 1 <= r["new_tokens"] <= 4
        assert 0.0 <= r["score"] <= 100.0 and isinstance(r["pred"], str)
        assert 0 < r["prompt_tokens"] <= r["length"] - 128  # RULER keeps 128 tokens for a niah answer
        assert r["prefill_s"] > 0 and r["decode_s"] >= 0.02 * 2 * (r["new_tokens"] - 1)  # 2 layers
        assert r["prefill_s"] + r["decode_s"] <= r["seconds"] + 0.002  # each rounded to 1 ms
    assert len(calls) == 2 * sum(r["new_tokens"] - 1 for r in rows)  # 2 layers
    assert json.loads((tmp_path / "results.json").read_text())["results"] == rows


@pytest.mark.parametrize("attention", [None, "ssa"], ids=["as-saved-dense", "converted-to-ssa"])
def test_dense_checkpoint_decodes_dense_or_converted(tmp_path, dense_dir, attention):
    att = None if attention is None else AttentionConfig(name="ssa", ssa=SMALL_SSA)
    cfg = eval_config(tmp_path, dense_dir, tasks=TASKS[:1], lengths=[512], depths=[0.5], max_new_tokens=3)
    cfg.attention = att
    (row,) = evaluate(cfg)["results"]
    assert row["decode"] == ("dense" if attention is None else "ssa") and 1 <= row["new_tokens"] <= 3


def compose_eval(overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="eval", overrides=list(overrides))


def test_default_config_composes():
    cfg = to_eval_config(compose_eval([]))
    assert cfg.tasks == ["ruler"] and cfg.lengths == ["4K"] and cfg.depths is None and cfg.attention is None
    assert cfg.model.name == "tiny" and cfg.wandb == "disabled" and cfg.answer_fn is None
    cfg = to_eval_config(compose_eval(["attention=ssa", "lengths=[512,16K]", "depths=[0,1]", "tasks=[all]"]))
    assert cfg.attention.name == "ssa" and cfg.lengths == ["512", "16K"] and cfg.depths == [0.0, 1.0]


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["tasks=[niah_single_9]"], "tasks"),
        (["tasks=[]"], "tasks"),
        (["lengths=[4Q]"], "lengths"),
        (["lengths=[]"], "lengths"),
        (["depths=[0.5,1.5]"], "depths"),
        (["samples=0"], "samples"),
        (["max_new_tokens=0"], "max_new_tokens"),
        (["max_prefill_tokens=-1"], "max_prefill_tokens"),
        (["dtype=fp8"], "dtype"),
        (["wandb=yes"], "wandb"),
        (["device=tpu"], "device"),
        (["answer_fn=no_such_module:fn"], "answer_fn"),
        (["+beam_size=4"], "beam_size"),
        (["attention=ssa", "attention.ssa.local_window=40"], "attention.ssa.local_window"),
    ],
)
def test_bad_config_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        to_eval_config(compose_eval(overrides))


def test_bad_values_found_at_run_time_name_the_key(tmp_path, dense_dir):
    with pytest.raises(ConfigError, match="checkpoint="):
        evaluate(eval_config(tmp_path, tmp_path / "missing", answer_fn="oracle"))
    with pytest.raises(ConfigError, match="lengths: 4096 is beyond the model's 2048 positions"):
        evaluate(eval_config(tmp_path, dense_dir, lengths=["4K"], answer_fn="oracle"))
    with pytest.raises(ConfigError, match="max_prefill_tokens=100"):
        evaluate(eval_config(tmp_path, dense_dir, max_prefill_tokens=100, answer_fn="oracle"))
    with pytest.raises(ConfigError, match="max_new_tokens"):
        evaluate(eval_config(tmp_path, dense_dir, lengths=["2K"], max_new_tokens=1000, answer_fn="oracle"))
    with pytest.raises(ConfigError, match="lengths: vt at length=512"):  # too short for vt's one-shot example
        evaluate(eval_config(tmp_path, dense_dir, tasks=["vt"], depths=None, answer_fn="oracle"))


def test_cli_smoke_writes_outputs_and_wandb_offline(tmp_path, ssa_dir):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "train.eval", f"checkpoint={ssa_dir}", "tasks=[niah_single_1]", "lengths=[512]",
           "depths=[0.5]", "samples=1", "max_new_tokens=2", f"out_dir={out}", "wandb=offline"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_SILENT": "true"}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| niah_single_1 |" in proc.stdout  # the table on stdout; logs and the bar on stderr
    assert "eval:" in proc.stderr and "niah_single_1 @ 512" in proc.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["command"].startswith("python -m train.eval checkpoint=") and res["attention"] == "ssa"
    assert res["results"][0]["decode"] == "ssa"
    assert (out / "results.md").is_file() and (out / "niah_heatmap.png").is_file()
    assert (out / ".hydra" / "config.yaml").is_file()
    assert list((out / "wandb").glob("offline-run-*")), list(out.rglob("*"))

    bad = subprocess.run([*cmd[:3], "samples=0", f"out_dir={tmp_path / 'bad'}"], capture_output=True, text=True,
                         cwd=REPO, env=env, timeout=300)  # fmt: skip
    assert bad.returncode == 2 and "samples=0" in bad.stderr


@pytest.mark.parametrize("topk,want", [(0, 0.0), (64, 1.0)], ids=["no-routed-blocks", "every-block-routed"])
def test_needle_routing_reads_whether_the_needle_blocks_were_selected(tmp_path, dense_dir, topk, want):
    """needle_routing: the row names the blocks holding the needle's answer in the prompt, and per layer the
    share of (kv head, answer token) pairs that listed them all: 0 when nothing is routed (the needle at depth
    0.5 of 1K lies outside the sink and the 32-token window), 1 when every block is."""
    cfg = eval_config(tmp_path, dense_dir, tasks=TASKS[:1], lengths=["1K"], depths=[0.5], max_new_tokens=3,
                      needle_routing=True)  # fmt: skip
    cfg.attention = AttentionConfig(name="ssa", ssa=dataclasses.replace(SMALL_SSA, topk_blocks=topk))
    res = evaluate(cfg)
    (row,) = res["results"]
    tokens = byte_tokenizer()(row_prompt(row), add_special_tokens=False)["input_ids"]
    blocks = row["needle_blocks"]
    held = byte_tokenizer().decode(tokens[blocks[0] * 16 : (blocks[-1] + 1) * 16])
    assert row["answers"][0] in held and 10 < blocks[0] < 50  # the needle's value, far from both ends
    assert row["needle_routed"] == row["needle_routed_first"] == [want, want]
    # the beam trace of the needle's first block, per answer token, layer and kv head: never a candidate without
    # routed blocks (-2), routed with every block routed (-1); ranks per level for the first token
    outcome = -2 if topk == 0 else -1
    heads = json.loads((Path(dense_dir) / "config.json").read_text())["num_key_value_heads"]
    assert row["needle_lost"] == [[[outcome] * heads] * 2] * len(row["needle_lost"]) and len(row["needle_lost"]) >= 1
    assert len(row["needle_ranks_first"]) == 2 and all(len(h) == heads for h in row["needle_ranks_first"])
    assert [len(r) for r in row["needle_ranks_first"][0]] == [len(row["needle_widths_first"])] * heads
    assert row["needle_widths_first"][0] == topk
    first = {"routed": 1.0} if topk else {"not routable": 1.0}
    assert res["summary"]["needle_routed"]["niah_single_1"]["1024"] == {
        "mean": want, "best_layer": want, "n": 1, "first_token": first}  # fmt: skip


def row_prompt(row: dict) -> str:
    from data.synthetic import generate

    return generate(row["task"], row["length"], byte_tokenizer(), row["seed"], row["depth"], "eval").prompt


def test_needle_routing_needs_an_ssa_model_and_no_answer_fn(tmp_path, dense_dir):
    with pytest.raises(ConfigError, match="needle_routing"):
        evaluate(eval_config(tmp_path, dense_dir, lengths=["512"], needle_routing=True))
    with pytest.raises(ConfigError, match="needle_routing"):
        to_eval_config(compose_eval(["needle_routing=true", "answer_fn=oracle"]))
