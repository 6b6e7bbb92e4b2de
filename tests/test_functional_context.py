"""Issue 6 on CPU: the document + synthetic data mix (data/mix.py), the sliding-window (swa) model's
selection, the configs, and a --smoke run of scripts/prove_functional_context.py."""

import dataclasses
import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from data import IGNORE_INDEX, DataConfig, SyntheticConfig, build_loader, byte_tokenizer
from data.mix import MixedLoader, SyntheticRows
from data.synthetic import generate
from ssa_kernels.config import SSAConfig
from ssa_kernels.diagnostics import SSARecorder
from ssa_kernels.selector.reference import beam_width, row_levels
from tests.scripts_loader import load_script
from train.__main__ import CONF_DIR
from train.config import ConfigError, ModelConfig, to_config
from train.model import build_config, build_model, build_tokenizer

SEQ = 1024


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("corpus-cache"))


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def mix_config(cache_dir, **synthetic) -> DataConfig:
    return DataConfig(cache_dir=cache_dir, synthetic=SyntheticConfig(**{"ratio": 0.5, **synthetic}))


def compose_cfg(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def is_synthetic_row(labels: torch.Tensor) -> bool:
    return int((labels != IGNORE_INDEX).sum()) < 64  # an answer + EOS (text rows label every token)


def take(loader, n):
    return [{k: v.clone() for k, v in b.items()} for b in itertools.islice(loader, n)]


# --- the data mix ---------------------------------------------------------------------------------


def test_ratio_is_the_share_of_synthetic_rows(cache_dir, tok):
    for ratio in (0.0, 0.3, 1.0):
        loader = MixedLoader.__new__(MixedLoader)  # only the row choice, no corpus
        loader.ratio, loader.mix_seed = ratio, 0
        share = np.mean([loader.is_synthetic(sid, n) for sid in range(4) for n in range(1000)])
        assert abs(share - ratio) < 0.03, (ratio, share)
    batches = take(build_loader(mix_config(cache_dir, ratio=0.5), tok, SEQ, 0, 1, 1, 2), 20)
    rows = [is_synthetic_row(b["labels"][j]) for b in batches for j in range(2)]
    assert 8 <= sum(rows) <= 32  # 40 rows at 0.5


def test_answer_only_supervision_labels_the_answer_and_eos(tok):
    for task in ("niah_single_1", "niah_multikey_2"):
        cfg = SyntheticConfig(ratio=1.0, tasks=[task])
        rows = SyntheticRows(cfg, tok, SEQ)
        row = rows.row(7, random.Random(0))
        sample = rows.sample(7, random.Random(0))
        labels = row["labels"]
        valid = labels[labels != IGNORE_INDEX]
        assert tok.decode(valid) == sample.target + tok.eos_token
        # each label is the next input token: the answer is predicted right after the prompt
        n_prompt = len(sample.prompt.encode())
        assert tok.decode(row["input_ids"][:n_prompt]) == sample.prompt
        assert labels[n_prompt - 1] == row["input_ids"][n_prompt]
        all_rows = SyntheticRows(SyntheticConfig(ratio=1.0, tasks=[task], supervise="all"), tok, SEQ)
        n_all = int((all_rows.row(7, random.Random(0))["labels"] != IGNORE_INDEX).sum())
        assert n_all == n_prompt + len(valid) - 1  # every token of the sample but the first


def test_short_lengths_pack_several_samples_per_row_each_its_own_document(tok):
    seq = 4096
    cfg = SyntheticConfig(ratio=1.0, tasks=["niah_single_1", "niah_multikey_2"], lengths=[1024, 2048])
    rows = SyntheticRows(cfg, tok, seq)
    for seed in range(4):
        row = rows.row(seed, random.Random(seed))
        ids, labels, pos = row["input_ids"], row["labels"], row["position_ids"]
        assert ids.shape == labels.shape == pos.shape == (seq,)
        starts = [0] + [i for i in range(1, seq) if pos[i] == 0]
        assert len(starts) >= 2  # 1024 + 2048 + ... fill a 4096-token row
        # the same draws again, one by one: each sample sits at its start, its answer + EOS labelled
        rng, per_row, answers, n_answer = random.Random(seed), seq // 1024, [], 0
        for j, start in enumerate(starts):
            s = rows.sample(seed * per_row + j, rng, budget=seq - start)
            n_prompt = len(s.prompt.encode())
            assert tok.decode(ids[start : start + n_prompt]) == s.prompt
            seg = labels[start + n_prompt - 1 : start + n_prompt + len(s.target)]
            assert tok.decode(seg) == s.target + tok.eos_token
            assert (labels[start : start + n_prompt - 1] == IGNORE_INDEX).all()
            answers.append(s.answers[0])
            n_answer += len(s.target.encode()) + 1
        assert int((labels != IGNORE_INDEX).sum()) == n_answer  # nothing else is labelled
        assert len(set(answers)) == len(answers)


def test_extra_queries_append_answered_lookups_of_the_samples_own_needles(tok):
    import re

    from data.mix import _NEEDLE_RE, EXTRA_QUERY

    cfg = SyntheticConfig(ratio=1.0, tasks=["niah_multikey_2"], lengths=[1024, 2048], extra_queries=6)
    rows = SyntheticRows(cfg, tok, 4096)
    line = re.compile(re.escape(EXTRA_QUERY).replace(r"\{key\}", r"(\S+)").replace(r"\{value\}", r"(\d+)"))
    for seed in range(3):
        row = rows.row(seed, random.Random(seed))
        ids, labels, pos = row["input_ids"], row["labels"], row["position_ids"]
        starts = [i for i in range(len(pos)) if pos[i] == 0] + [len(pos)]
        for a, b in zip(starts, starts[1:], strict=False):
            text = tok.decode(ids[a:b])
            prompt_end = text.index(" The special magic number for ") + 1  # RULER's answer prefix
            needles = dict(_NEEDLE_RE.findall(text[:prompt_end]))
            assert len(needles) >= 2
            lookups = line.findall(text[prompt_end:])
            assert 1 <= len(lookups) <= 6
            for key, value in lookups:
                assert needles[key] == value  # the answer is the value of that key's needle in the prompt
            seg = labels[a:b]
            assert tok.decode(seg[seg != IGNORE_INDEX]).count("mentioned in the provided text is") == len(lookups)
    # extra_order=prompt: the first needles of the prompt, in its order (plain copying)
    ordered = SyntheticRows(
        SyntheticConfig(ratio=1.0, tasks=["niah_multikey_2"], lengths=[2048], extra_queries=5, extra_order="prompt"),
        tok, 2048,
    )  # fmt: skip
    ids = ordered.row(3, random.Random(3))["input_ids"]
    text = tok.decode(ids)
    prompt_end = text.index(" The special magic number for ") + 1
    assert line.findall(text[prompt_end:]) == _NEEDLE_RE.findall(text[:prompt_end])[:5]
    # one needle (niah_single_1): nothing appended, the row is the plain sample
    single = SyntheticRows(SyntheticConfig(ratio=1.0, tasks=["niah_single_1"], extra_queries=6), tok, SEQ)
    plain = SyntheticRows(SyntheticConfig(ratio=1.0, tasks=["niah_single_1"]), tok, SEQ)
    lab = single.row(5, random.Random(0))["labels"]
    assert tok.decode(lab[lab != IGNORE_INDEX]) == plain.sample(5, random.Random(0)).target + tok.eos_token


@pytest.mark.parametrize("tokenizer", ["byte", "bpe"])
def test_extra_labels_value_labels_each_lookups_value_not_its_random_key(tok, tokenizer):
    """extra_labels=value: the same row text as extra_labels=all, but a lookup's question (its key drawn at
    random) carries no label; its value, the answer and the EOS do. With a BPE tokenizer too (pieces are
    tokenized apart, so their labels line up with their tokens)."""
    import re

    from data.bpe import train_bpe, word_texts
    from data.mix import EXTRA_QUERY

    if tokenizer == "bpe":
        tok = train_bpe([*word_texts(repeats=2), *(generate("niah_multikey_2", 2048, tok, i, None, "train").prompt
                                                     for i in range(3))], vocab_size=2048)  # fmt: skip
    line = re.compile(re.escape(EXTRA_QUERY).replace(r"\{key\}", r"(\S+)").replace(r"\{value\}", r"(\d+)"))
    kw = dict(ratio=1.0, tasks=["niah_multikey_2"], lengths=[2048], extra_queries=4)
    rows = {how: SyntheticRows(SyntheticConfig(**kw, extra_labels=how), tok, 2048) for how in ("all", "value")}
    for seed in range(3):
        full, part = (rows[how].row(seed, random.Random(seed)) for how in ("all", "value"))
        assert tok.decode(full["input_ids"]) == tok.decode(part["input_ids"])  # the same text
        text = tok.decode(part["input_ids"])
        lookups = line.findall(text[text.index(" The special magic number for ") :])
        assert len(lookups) == 4
        learnt = tok.decode(part["labels"][part["labels"] != IGNORE_INDEX])
        assert learnt.count(".") == 1 + len(lookups) and learnt.endswith(tok.eos_token)
        assert "mentioned" not in learnt and all(key not in learnt for key, _ in lookups)
        assert all(f" {value}." in learnt for _, value in lookups)
        assert "mentioned in the provided text is" in tok.decode(full["labels"][full["labels"] != IGNORE_INDEX])


def test_synthetic_rows_use_train_seeds_never_eval_samples(cache_dir, tok):
    rows = SyntheticRows(SyntheticConfig(ratio=1.0, tasks=["niah_single_1"]), tok, SEQ)
    for seed in range(5):
        s = rows.sample(seed, random.Random(0))
        assert s.split == "train"
        evals = {generate("niah_single_1", SEQ, tok, e, d, "eval").answers[0] for e in range(5) for d in (None, 0.5)}
        assert s.answers[0] not in evals
    # the loader's seeds: distinct per (row, window)
    loader = build_loader(mix_config(cache_dir, ratio=1.0, tasks=["niah_single_1"]), tok, SEQ, 0, 1, 1, 2)
    answers = [tok.decode(b["labels"][j][b["labels"][j] != IGNORE_INDEX]) for b in take(loader, 5) for j in range(2)]
    assert len(set(answers)) == len(answers)


def test_mix_is_deterministic_resumable_and_split_independent(cache_dir, tok):
    data = mix_config(cache_dir, ratio=0.5)
    a = take(build_loader(data, tok, SEQ, 0, 1, 1, 2), 6)
    b = take(build_loader(data, tok, SEQ, 0, 1, 1, 2), 6)
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)
    # resume from the state after 3 batches
    loader = build_loader(data, tok, SEQ, 0, 1, 1, 2)
    take(loader, 3)
    state = json.loads(json.dumps({str(k): v for k, v in loader.state_dict().items()}))  # as data.json stores it
    resumed = take(build_loader(data, tok, SEQ, 0, 1, 1, 2, {int(k): v for k, v in state.items()}), 3)
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a[3:], resumed, strict=True) for k in x)
    # 1 rank x 2 rows == 2 ranks x 1 row: the same global rows
    r0 = take(build_loader(data, tok, SEQ, 0, 2, 1, 1), 3)
    r1 = take(build_loader(data, tok, SEQ, 1, 2, 1, 1), 3)
    for x, y0, y1 in zip(a, r0, r1, strict=False):
        assert torch.equal(x["input_ids"], torch.cat([y0["input_ids"], y1["input_ids"]]))


def test_ratio_zero_is_the_packed_loader_unchanged(cache_dir, tok):
    from data import PackedLoader

    loader = build_loader(DataConfig(cache_dir=cache_dir), tok, SEQ, 0, 1, 1, 2)
    assert type(loader) is PackedLoader


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.synthetic.ratio=1.5", "data.synthetic.ratio"),
        ("data.synthetic.tasks=[nope]", "data.synthetic.tasks"),
        ("data.synthetic.lengths=[99999999]", "data.synthetic.lengths"),
        ("data.synthetic.supervise=prompt", "data.synthetic.supervise"),
        ("data.synthetic.extra_queries=-1", "data.synthetic.extra_queries"),
        ("data.synthetic.extra_order=sorted", "data.synthetic.extra_order"),
        ("data.synthetic.extra_labels=key", "data.synthetic.extra_labels"),
    ],
)
def test_bad_mix_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        to_config(compose_cfg(["data=mix", override]))


@pytest.mark.parametrize("attention", ["ssa", "swa", "dense"])
def test_experiment_composes_for_each_model(attention):
    config = to_config(compose_cfg(["experiment=functional_context", f"attention={attention}"]))
    assert config.train.seq_len == 16384 and config.data.synthetic.ratio > 0
    assert config.model.hf_config["max_position_embeddings"] >= 1 << 20
    if attention == "swa":
        assert config.attention.name == "ssa" and config.attention.ssa.topk_blocks == 0


def test_4k_recipe_composes_and_model_overrides_reach_only_their_model():
    """conf/experiment/functional_context_4k.yaml (stage 2 of the fc8 recipe) with the script's per-model
    overrides: the ssa model gets the small routed budget and distillation, swa only the window."""
    script = load_script("prove_functional_context")
    args = script.parse_args(["--out", "x", "--experiment", "functional_context_4k", "--train-len", "4096",
                              "--ssa-override", "attention.ssa.topk_blocks=16", "attention.ssa.routing=distill",
                              "--swa-override", "attention.ssa.local_window=256"])  # fmt: skip
    configs = {m: to_config(compose_cfg(script.train_overrides(m, args))) for m in ("ssa", "swa", "dense")}
    ssa, swa = configs["ssa"].attention.ssa, configs["swa"].attention.ssa
    assert (ssa.topk_blocks, ssa.routing, ssa.local_window) == (16, "distill", 1024)
    assert (swa.topk_blocks, swa.routing, swa.local_window) == (0, "none", 256)
    assert configs["dense"].attention.name == "dense"
    for config in configs.values():
        assert (config.train.seq_len, config.train.micro_batch, config.data.synthetic.ratio) == (4096, 8, 1.0)


# --- swa: sink + window only ----------------------------------------------------------------------


def test_swa_selection_never_routes(tok):
    overrides = ["attention=swa", "attention.ssa.local_window=256", "model.hf_config.max_position_embeddings=4096"]
    config = to_config(compose_cfg(overrides))
    cfg = config.attention.ssa
    torch.manual_seed(0)
    model = build_model(config.model, config.attention, build_config(config.model, tok, 2048)).eval()
    ids = torch.randint(0, 256, (1, 2048))
    with SSARecorder(lambda call: call.selection.indices.clone()) as rec, torch.no_grad():
        model(input_ids=ids)
    assert len(rec.records) == model.config.num_hidden_layers
    nb = 2048 // cfg.block_size
    q_block = torch.arange(nb)[None, None, :, None]  # (1, 1, nb, 1)
    for indices in rec.records.values():  # [Bt, Hkv, nb, S]
        listed = indices >= 0
        sink = indices < cfg.sink_blocks
        window = (indices <= q_block) & (indices > q_block - cfg.local_blocks)
        assert bool((~listed | sink | window).all()), "a block outside sink + window was selected"
        # and the window is all there: sink + local blocks (fewer at the start)
        expect = torch.clamp(q_block[0, 0, :, 0] + 1, max=cfg.local_blocks) + (q_block[0, 0, :, 0] >= cfg.local_blocks)
        assert torch.equal(listed.sum(-1)[0, 0], expect)


# --- the script -----------------------------------------------------------------------------------


def test_table_weights_cells_by_samples_and_joins_recipes(tmp_path):
    script = load_script("prove_functional_context")
    row = dict(model="ssa", task="niah_single_1", length=16384, depth=0.2, accuracy=1.0, samples=1)
    one = {"device": "d", "date": "t", "command": "c", "results": [row, {**row, "depth": 0.4, "accuracy": 0.0,
                                                                          "samples": 3}]}  # fmt: skip
    table = script.markdown_table(one)
    assert "| model | task | 16K |" in table and "| ssa | niah_single_1 | 0.25 (4) |" in table  # 1 of 4 samples
    joined = {**one, "results": [{**row, "recipe": "a"}, {**row, "task": "niah_multikey_1", "length": 1 << 20,
                                                          "accuracy": 0.5, "recipe": "b"}]}  # fmt: skip
    table = script.markdown_table(joined)
    assert "| model | recipe | task | 16K | 1M |" in table and "|---|---|---|---:|---:|" in table
    assert "| ssa | a | niah_single_1 | 1.00 (1) | - |" in table
    assert "| ssa | b | niah_multikey_1 | - | 0.50 (1) |" in table
    assert script.heatmap(joined["results"], "ssa", tmp_path / "h.png").is_file()


def test_join_merges_runs_read_by_several_calls_and_refuses_a_cell_read_twice(tmp_path):
    script = load_script("prove_functional_context")
    row = dict(model="ssa", task="niah_single_1", length=16384, depth=0.5, accuracy=1.0, samples=1)

    def run(name: str, rows: list[dict], **extra) -> str:
        (tmp_path / name).mkdir()
        doc = {"device": "H100", "date": f"2026-12-0{len(name)}", "command": f"cmd {name}", "results": rows, **extra}
        (tmp_path / name / "functional-context.json").write_text(json.dumps(doc))
        return str(tmp_path / name)

    train = run("a", [row], models={"ssa": {"steps": 660}})
    read = run("bb", [{**row, "length": 1 << 20, "accuracy": 0.0}])
    base = run("ccc", [{**row, "model": "swa", "accuracy": 0.0}, {**row, "model": "dense"}],
               commands={"swa": "cmd base", "dense": "cmd base"})  # fmt: skip
    out = tmp_path / "joined"
    doc = script.main(["--out", str(out), "--join", train, read, base])
    assert [(r["model"], r["length"], r["accuracy"]) for r in doc["results"]] == [
        ("ssa", 16384, 1.0), ("ssa", 1 << 20, 0.0), ("swa", 16384, 0.0), ("dense", 16384, 1.0)]  # fmt: skip
    assert doc["commands"] == {f"{train}/ssa": "cmd a", f"{read}/ssa": "cmd bb", f"{base}/swa": "cmd base",
                               f"{base}/dense": "cmd base"}  # fmt: skip
    assert doc["models"] == {f"{train}/ssa": {"steps": 660}} and doc["date"] == "2026-12-03" and doc["device"] == "H100"
    assert json.loads((out / "functional-context.json").read_text()) == doc
    table = (out / "functional-context.md").read_text()
    assert "| ssa | niah_single_1 | 1.00 (1) | 0.00 (1) |" in table and f"Command ({base}/dense, {base}/swa)" in table
    assert (out / "functional-context-ssa.png").is_file()
    # =RECIPE labels a directory's rows; the same cell under two labels is two rows
    doc = script.main(["--out", str(out), "--join", f"{train}=r1", f"{train}=r2"])
    assert [r["recipe"] for r in doc["results"]] == ["r1", "r2"]
    with pytest.raises(SystemExit, match="in both"):
        script.main(["--out", str(out), "--join", train, train])
    with pytest.raises(SystemExit, match="no .*functional-context.json and no evaluated samples"):
        script.main(["--out", str(out), "--join", str(tmp_path / "missing")])
    # a read cut by its time limit before it wrote its document: rows from the samples it had written
    cut = tmp_path / "cut" / "ssa" / "eval"
    cut.mkdir(parents=True)
    sample = dict(task="niah_multikey_1", length=1 << 20, depth=0.1, score=100.0, needle_routed=[1.0, 0.0])
    cut.joinpath("samples.jsonl").write_text("\n".join(json.dumps({**sample, "depth": d}) for d in (0.1, 0.35)))
    doc = script.main(["--out", str(out), "--join", train, str(tmp_path / "cut")])
    assert [(r["task"], r["depth"], r["accuracy"], r["needle_routed"]) for r in doc["results"][1:]] == [
        ("niah_multikey_1", 0.1, 1.0, 0.5), ("niah_multikey_1", 0.35, 1.0, 0.5)]  # fmt: skip
    assert doc["commands"][f"{tmp_path / 'cut'}/ssa"].startswith("unrecorded")


def test_smoke_run_trains_evaluates_and_writes_the_schema(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    script = load_script("prove_functional_context")
    out = tmp_path / "fc"
    # side by side; ssa trains longer, so that an evaluation started before all training ended would show
    doc = script.main(["--out", str(out), "--smoke", "--ssa-override", "train.steps=6", "--models", "ssa", "swa",
                       "--jobs", "2"])  # fmt: skip
    assert set(doc) >= {"device", "date", "command", "results"}
    rows = doc["results"]
    assert {tuple(sorted(r)) for r in rows} == {("accuracy", "depth", "length", "model", "samples", "task")}
    cells = {(r["model"], r["task"], r["length"], r["depth"]) for r in rows}
    assert len(cells) == 2 * 2 * 2 * 2 == len(rows)  # models x tasks x lengths x depths
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    assert json.loads((out / "functional-context.json").read_text()) == doc
    for name in ("functional-context.md", "functional-context-ssa.png", "functional-context-swa.png"):
        assert (out / name).is_file(), name
    assert doc["command"].endswith("--models ssa swa --jobs 2")
    trained, evaluating = [], []
    for model, steps in (("ssa", 6), ("swa", 2)):
        log_text = (out / model / "log.txt").read_text()  # each model ran in its own processes: train, then eval
        trained += [line[:23] for line in log_text.splitlines() if f"{model}: trained {steps} steps" in line]
        evaluating += [line[:23] for line in log_text.splitlines() if "train.eval: evaluating" in line]
        assert doc["models"][model]["steps"] == steps
        assert doc["models"][model]["evaluated"] == str(out / model)
        assert list((out / model / "checkpoints").glob("step_*/model/config.json"))
        assert (out / model / "eval" / "results.json").is_file()
    assert len(trained) == len(evaluating) == 2 and max(trained) < min(evaluating)  # all trained before any eval
    # eval-only on one model: its rows are replaced, the other model's kept; --eval-yarn: one evaluation per
    # length, YaRN of factor length / train-len beyond the training length (1024 in smoke), none within it
    doc2 = script.main(["--out", str(out), "--smoke", "--eval-only", "--models", "swa", "--eval-lengths", "1024",
                        "2048", "--depths", "0.5", "--eval-yarn", "default", "--eval-ssa", "far_distance=64",
                        "--needle-routing"])  # fmt: skip
    swa = [r for r in doc2["results"] if r["model"] == "swa"]
    # the kept model keeps its command, the re-evaluated one gets this one's; the table names both
    assert doc2["commands"] == {"ssa": doc["command"], "swa": doc2["command"]} != doc["commands"]
    assert "Command (ssa): `" + doc["command"] in (out / "functional-context.md").read_text()
    assert {(r["length"], r["depth"]) for r in swa} == {(1024, 0.5), (2048, 0.5)}
    assert [r["needle_routed"] for r in swa] == [0.0] * 4  # 2 tasks x 2 lengths; no routed blocks, needle mid-context
    assert len([r for r in doc2["results"] if r["model"] == "ssa"]) == 8
    scaling = {L: json.loads((out / "swa" / "eval" / L / "results.json").read_text())["config"]["model"]["rope_scaling"]
               for L in ("1024", "2048")}  # fmt: skip
    for L in ("1024", "2048"):  # --eval-ssa: the saved settings changed for the evaluation only
        assert json.loads((out / "swa" / "eval" / L / "results.json").read_text())["ssa"]["far_distance"] == 64
    saved = json.loads(next((out / "swa" / "checkpoints").glob("step_*/model/config.json")).read_text())["ssa"]
    assert saved["far_distance"] == 0  # the checkpoint itself is unchanged
    assert scaling == {
        "1024": None,
        "2048": {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 1024},
    }


@pytest.mark.parametrize("tokenizer", ["byte", "bpe"])
def test_pretrain_stage_is_where_each_model_starts(tmp_path, monkeypatch, tokenizer):
    """--pretrain-min: one dense stage-1 run (conf/experiment/functional_context_short.yaml, smoke sizes), then
    the model's training loads its weights (model=hf) instead of a fresh init, and its tokenizer: with
    --tokenizer bpe one trained first into <out>/tokenizer."""
    from safetensors.torch import load_file

    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    script = load_script("prove_functional_context")
    out = tmp_path / "fc"
    doc = script.main(["--out", str(out), "--smoke", "--models", "ssa", "--pretrain-min", "5", "--eval-lengths",
                       "1024", "--depths", "0.5", "--tokenizer", tokenizer])  # fmt: skip
    pre = doc["models"]["pretrain"]
    assert pre["steps"] == 2 and "experiment=functional_context_short" in pre["overrides"]
    assert "attention=dense" in pre["overrides"]
    want = str(out.resolve() / "tokenizer") if tokenizer == "bpe" else "byte"
    assert f"model.tokenizer={want}" in pre["overrides"]
    ssa = doc["models"]["ssa"]
    assert f"model.path={pre['model']}" in ssa["overrides"] and "model=hf" in ssa["overrides"]
    assert not [o for o in ssa["overrides"] if o.startswith(("model.hf_config.", "model.tokenizer="))]  # its own
    vocab = json.loads((Path(ssa["checkpoint"]) / "model" / "config.json").read_text())["vocab_size"]
    tokens = len(build_tokenizer(ModelConfig(tokenizer=want)))
    assert tokens == 259 if tokenizer == "byte" else tokens > 4000
    assert vocab == -(-tokens // 64) * 64  # the model was sized by that tokenizer
    assert {r["model"] for r in doc["results"]} == {"ssa"}

    def embedding(model_dir):
        tensors = {}
        for f in Path(model_dir).glob("*.safetensors"):
            tensors.update(load_file(str(f)))
        return tensors["model.embed_tokens.weight"].float().flatten()

    stage1 = embedding(pre["model"])
    stage2 = embedding(Path(ssa["checkpoint"]) / "model")
    corr = torch.corrcoef(torch.stack([stage1, stage2]))[0, 1]
    assert corr > 0.9, f"stage 2 did not start from stage 1's weights (correlation {corr:.3f})"
    assert not torch.equal(stage1, stage2)  # and it trained
    if tokenizer == "bpe":
        return
    # --pretrained: a later run starts from the same stage-1 weights without training them again
    doc2 = script.main(["--out", str(tmp_path / "fc2"), "--smoke", "--models", "swa", "--pretrained", pre["model"],
                        "--eval-lengths", "1024", "--depths", "0.5"])  # fmt: skip
    assert f"model.path={pre['model']}" in doc2["models"]["swa"]["overrides"]
    assert not (tmp_path / "fc2" / "pretrain").exists()
    with pytest.raises(SystemExit):  # not a model dir
        script.parse_args(["--out", str(tmp_path), "--pretrained", str(tmp_path)])
    # --train-only: a checkpoint and no results document; --eval-only reads it later. With --jobs, the models
    # train side by side and no evaluation phase follows
    fc3 = tmp_path / "fc3"
    doc3 = script.main(["--out", str(fc3), "--smoke", "--models", "swa", "dense", "--jobs", "2", "--pretrained",
                        pre["model"], "--train-only"])  # fmt: skip
    assert doc3["results"] == []
    assert not (fc3 / "functional-context.json").exists()
    for model in ("swa", "dense"):
        assert doc3["models"][model]["steps"] == 2 and "evaluated" not in doc3["models"][model]
        assert list((fc3 / model / "checkpoints").glob("step_*/model/config.json"))
        assert not (fc3 / model / "eval").exists()
    with pytest.raises(SystemExit):
        script.parse_args(["--out", str(fc3), "--train-only", "--eval-only"])


def test_recipe_expands_to_the_measured_run_and_the_command_line_wins(tmp_path):
    script = load_script("prove_functional_context")
    args = script.parse_args(["--out", str(tmp_path), "--recipe", "h200-4k"])
    assert args.experiment == "functional_context_4k" and args.train_len == 4096 and args.pretrain_min == 2.2
    assert "attention.ssa.beam_min=64" in args.ssa_override and args.eval_yarn == "default"
    assert args.eval_lengths == ["16K", "64K", "256K", "1M"]
    mine = script.parse_args(["--out", str(tmp_path), "--recipe", "h200-4k", "--eval-lengths", "16K", "--samples", "1"])
    assert mine.eval_lengths == ["16K"] and mine.samples == 1 and mine.train_len == 4096
    # the recorded command is the whole run, the recipe spelled out
    assert script.expand_recipe(["--recipe", "h200-4k", "--out", "x"]) == [*script.RECIPES["h200-4k"], "--out", "x"]
    with pytest.raises(SystemExit, match="unknown"):
        script.parse_args(["--out", str(tmp_path), "--recipe", "nope"])


def test_eval_yarn_auto_drops_the_temperature_for_fixed_size_attention(tmp_path):
    script = load_script("prove_functional_context")
    args = script.parse_args(["--out", str(tmp_path), "--train-len", "4096", "--eval-yarn", "auto"])
    groups = {m: script.eval_groups(["4K", "64K"], args, m) for m in ("ssa", "swa", "dense")}
    for model in ("ssa", "swa"):  # the same keys per query at every length: no temperature
        assert groups[model] == [
            (["4K"], None),
            (["64K"], "model.rope_scaling={rope_type:yarn,factor:16.0,original_max_position_embeddings:4096,"
             "attention_factor:1.0}"),
        ]  # fmt: skip
    assert (
        groups["dense"][1][1] == "model.rope_scaling={rope_type:yarn,factor:16.0,original_max_position_embeddings:4096}"
    )
    args.eval_yarn = "default"
    assert script.eval_groups(["64K"], args, "ssa") == [(["64K"], groups["dense"][1][1])]
    # --baseline-eval-yarn: swa and dense their own (h200-4k-far: ssa without YaRN, the baselines as in h200-4k)
    far = script.parse_args(["--out", str(tmp_path), "--recipe", "h200-4k-far"])
    assert "attention.ssa.far_distance=1024" in far.ssa_override and far.eval_yarn == "off"
    assert script.eval_groups(["16K", "64K"], far, "ssa") == [(["16K", "64K"], None)]
    for model in ("swa", "dense"):
        assert [g[0] for g in script.eval_groups(["16K", "64K"], far, model)] == [["16K"], ["64K"]]
        assert "factor:4.0" in script.eval_groups(["16K"], far, model)[0][1]
    # h200-4k-wide: h200-4k-far with fc31's stage 1 (loss-gated, extra lookups), 660 stage-2 steps, wide beams
    wide = script.parse_args(["--out", str(tmp_path), "--recipe", "h200-4k-wide"])
    assert wide.ssa_override == far.ssa_override and wide.eval_yarn == "off" and wide.pretrain_min == 2.9
    assert {"train.stop_at_loss=0.01", "data.synthetic.extra_queries=8"} <= set(wide.pretrain_override)
    assert wide.train_steps == 660 and wide.eval_ssa == ["beam_widths=[64,256,64]"] and wide.samples == 1
    assert wide.depths == [0.08, 0.16, 0.24, 0.32, 0.4, 0.48, 0.56, 0.64, 0.72, 0.8, 0.88, 0.96]
    assert "attention.ssa.distill_target=true_distance" in wide.ssa_override  # what fc31..fc34 trained with
    # h200-4k-attended: h200-4k-wide distilled toward the attention SSA computes, evaluated with 256 level-1 nodes
    att = script.parse_args(["--out", str(tmp_path), "--recipe", "h200-4k-attended"])
    assert set(att.ssa_override) ^ set(wide.ssa_override) == {
        "attention.ssa.distill_target=attended",
        "attention.ssa.distill_target=true_distance",
    }
    assert att.eval_ssa == ["beam_widths=[64,256,256]"] and att.train_steps == 660 and att.depths == wide.depths
    ssa = script.to_config(script.compose_config("config", ["attention=ssa", *att.ssa_override]))
    assert ssa.attention.ssa.distill_target == "attended" and ssa.attention.ssa.far_distance == 1024
    # h200-4k-bound: the same training, coarse nodes scored by the bound of their best block, beams of 64
    bound = script.parse_args(["--out", str(tmp_path), "--recipe", "h200-4k-bound"])
    assert bound.ssa_override == att.ssa_override and bound.eval_ssa == ["node_score=bound", "beam_widths=[64]"]
    cfg = SSAConfig(node_score="bound", beam_widths=[64])  # what fc37/fc40 gave as [64,64,64] / [64,64,64,64]
    cfg.validate()
    assert {beam_width(level, height, cfg) for height in (4, 5) for level in range(1, height)} == {64}  # 1M, 4M
    # h200-4k-multikey: h200-4k-bound with 8 random lookups after each multikey row in stage 2 (every model), both tasks
    mk = script.parse_args(["--out", str(tmp_path), "--recipe", "h200-4k-multikey"])
    assert mk.eval_ssa == bound.eval_ssa and mk.ssa_override == bound.ssa_override
    assert mk.pretrain_override == bound.pretrain_override and mk.tasks == ["niah_single_1", "niah_multikey_2"]
    for model in ("ssa", "dense"):
        data = script.to_config(script.compose_config("config", script.train_overrides(model, mk))).data.synthetic
        assert data.extra_queries == 8 and data.extra_order == "random" and "niah_multikey_2" in data.tasks
    assert (
        script.to_config(
            script.compose_config("config", script.train_overrides("ssa", bound))
        ).data.synthetic.extra_queries
        == 0
    )
    # h200-4k-prose: h200-4k-multikey with prose-heavy stage-2 rows, read with bound leaves, wider beams, 64 blocks
    prose = script.parse_args(["--out", str(tmp_path), "--recipe", "h200-4k-prose"])
    assert prose.ssa_override == mk.ssa_override and prose.pretrain_override == mk.pretrain_override
    assert prose.tasks == ["niah_single_1", "niah_single_2", "niah_multikey_1"]
    assert prose.eval_lengths == ["16K", "64K", "256K", "1M"]
    assert prose.depths == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    cfg = SSAConfig(**dict(kv.split("=") for kv in prose.eval_ssa if "beam" not in kv), beam_widths=[64, 256, 512])
    assert (cfg.node_score, cfg.leaf_score, int(cfg.topk_blocks)) == ("bound", "bound", 64)
    assert "beam_widths=[64,256,512]" in prose.eval_ssa
    # one list for every length: the 256K reads' [64,256] on query blocks up to 256K, 512 level-1 nodes beyond
    measured_256k = dataclasses.replace(cfg, beam_widths=[64, 256])
    heights = row_levels((1 << 20) // cfg.block_size, cfg, torch.device("cpu"))  # each query block's pyramid
    assert [int(heights[L // cfg.block_size - 1]) for L in (16 << 10, 64 << 10, 256 << 10, 1 << 20)] == [2, 3, 3, 4]
    assert int(heights[4095]) == 3 and int(heights[4096]) == 4  # rows past 256K: the 1M search
    for height in (1, 2, 3):
        assert [beam_width(lv, height, cfg) for lv in range(1, height)] == [
            beam_width(lv, height, measured_256k) for lv in range(1, height)
        ]
    assert [beam_width(lv, 4, cfg) for lv in (3, 2, 1)] == [64, 256, 512]
    data = script.to_config(script.compose_config("config", script.train_overrides("ssa", prose))).data.synthetic
    assert list(data.tasks) == ["niah_single_1", "niah_single_2", "niah_multikey_1"] and data.extra_queries == 8
    stage1 = [f"experiment={wide.pretrain_experiment}", "attention=dense", *wide.pretrain_override]
    assert script.to_config(script.compose_config("config", stage1)).train.stop_at_loss == 0.01
