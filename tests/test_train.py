"""End-to-end checks of the training spine: Hydra entry, configs, model sources, resume, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from data import byte_tokenizer
from train.__main__ import CONF_DIR
from train.checkpoint import CheckpointError
from train.config import ConfigError, to_config
from train.model import CausalLMLoss, build_config, build_model
from train.trainer import NonFiniteLoss, train

REPO = Path(__file__).resolve().parent.parent
SMOKE = ["experiment=smoke", "train.seq_len=64"]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One stdlib corpus build for the whole session."""
    return str(tmp_path_factory.mktemp("corpus-cache"))


def compose_cfg(overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def run_inprocess(run_dir, overrides, cache_dir):
    cfg = compose_cfg([*SMOKE, f"data.cache_dir={cache_dir}", *overrides])
    return train(to_config(cfg), OmegaConf.to_container(cfg, resolve=True), Path(run_dir))


def run_cli(run_dir, overrides, cache_dir, check=True, **kw):
    cmd = [sys.executable, "-m", "train", *SMOKE, f"data.cache_dir={cache_dir}", f"hydra.run.dir={run_dir}", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300, **kw)
    if check and out.returncode != 0:
        raise AssertionError(f"exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def losses(run_dir):
    """Per-step metrics; a step logged twice (re-run after a resume) keeps its last value."""
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: (r["loss"], r["grad_norm"]) for r in rows}


def same_steps(a: dict, b: dict, steps: int, rtol: float = 1e-5) -> None:
    """Two runs' per-step (loss, grad_norm) (:func:`losses`): steps 1..``steps`` each, equal within ``rtol``,
    and ``a`` learns (equal constants would prove nothing)."""
    assert sorted(a) == sorted(b) == list(range(1, steps + 1))
    for key in (0, 1):  # loss, grad_norm
        torch.testing.assert_close(
            torch.tensor([a[s][key] for s in a], dtype=torch.float64),
            torch.tensor([b[s][key] for s in a], dtype=torch.float64),
            rtol=rtol, atol=0,
        )  # fmt: skip
    assert a[steps][0] < a[1][0]


# --- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["experiment=smoke"],
        ["experiment=gpu_125m_32k"],
        ["parallel=ddp"],
        ["parallel=ulysses", "parallel.sp=2"],
        ["parallel=auto", "parallel.tiled_mlp=4096", "parallel.offload_activations=true"],
        ["data=files", "data.paths=[x]"],
        ["model=llama_125m"],
        ["model=hf", "model.path=/some/dir"],
        ["train.schedule.name=constant"],
    ],
)
def test_every_config_composes_and_validates(overrides):
    config = to_config(compose_cfg(overrides))
    assert config.train.steps > 0 and config.model.name


def test_experiment_overrides_the_base():
    config = to_config(compose_cfg(["experiment=gpu_125m_32k"]))
    assert (config.name, config.model.name, config.train.seq_len) == ("gpu_125m_32k", "llama_125m", 32768)
    assert to_config(compose_cfg(["experiment=gpu_125m_32k", "train.seq_len=4096"])).train.seq_len == 4096


def test_ssa128_is_ssa_at_128_key_blocks_with_the_same_token_budget():
    """``attention=ssa128``: ssa.yaml with 128-key blocks and half the routed blocks, nothing else changed; the
    tokens a query attends (sink, window, routed) within one 64-key block of the default's; the command line wins."""
    fast, base = (to_config(compose_cfg([f"attention={a}"])).attention for a in ("ssa128", "ssa"))
    assert fast.name == base.name == "ssa"
    changed = {k for k, v in asdict(fast.ssa).items() if v != getattr(base.ssa, k)}
    assert changed == {"block_size", "topk_blocks"} and (fast.ssa.block_size, base.ssa.block_size) == (128, 64)

    def budget(s):
        return (s.sink_blocks + s.topk_blocks) * s.block_size + s.local_window

    assert abs(budget(fast.ssa) - budget(base.ssa)) <= base.ssa.block_size, (budget(fast.ssa), budget(base.ssa))
    assert to_config(compose_cfg(["attention=ssa128", "attention.ssa.topk_blocks=8"])).attention.ssa.topk_blocks == 8


@pytest.mark.parametrize(
    "override,key",
    [
        ("train.precision=fp16", "train.precision"),
        ("logging.wandb=maybe", "logging.wandb"),
        ("train.grad_accum=0", "train.grad_accum"),
        ("parallel.name=zigzag", "parallel.name"),
        ("parallel.tiled_mlp=-1", "parallel.tiled_mlp"),
        ("train.optimizer.lr=-1", "train.optimizer.lr"),
        ("train.optimizer.betas=[0.9]", "train.optimizer.betas"),
        ("train.position_skip=16", "train.position_skip"),
        ("train.stop_at_loss=-1", "train.stop_at_loss"),
        ("train.stop_at_loss_window=0", "train.stop_at_loss_window"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        to_config(compose_cfg([override]))


@pytest.mark.parametrize("override", ["train.no_such_key=1", "+train.no_such_key=1", "no_such_group=1"])
def test_unknown_key_is_an_error_naming_it(tmp_path, override, cache_dir):
    out = run_cli(tmp_path / "run", [override], cache_dir, check=False)
    assert out.returncode != 0
    assert "no_such" in out.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_cli_run_writes_resolved_config_metrics_and_checkpoints(tmp_path, cache_dir):
    run = tmp_path / "run"
    run_cli(run, [], cache_dir)
    resolved = OmegaConf.load(run / "config.yaml")
    assert resolved.train.seq_len == 64 and "${" not in (run / "config.yaml").read_text()
    steps = losses(run)
    assert sorted(steps) == [1, 2, 3, 4]
    assert steps[4][0] < steps[1][0]  # it learns
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["step_00000002", "step_00000004"]
    ckpt = run / "checkpoints" / "step_00000004"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert AutoModelForCausalLM.from_pretrained(ckpt / "model").config.hidden_size == 128
    assert AutoTokenizer.from_pretrained(ckpt / "model").decode([104, 105]) == "hi"


def test_multirun_sweep_runs_each_point(tmp_path, cache_dir):
    cmd = [
        sys.executable,
        "-m",
        "train",
        "-m",
        *SMOKE,
        f"data.cache_dir={cache_dir}",
        "train.steps=2",
        "train.optimizer.lr=1e-3,1e-2",
        f"hydra.sweep.dir={tmp_path}",
    ]
    out = subprocess.run(
        cmd, capture_output=True, text=True, cwd=REPO, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert out.returncode == 0, out.stderr[-3000:]
    runs = sorted(p for p in tmp_path.iterdir() if (p / "metrics.jsonl").exists())
    assert len(runs) == 2
    lrs = {OmegaConf.load(r / "config.yaml").train.optimizer.lr for r in runs}
    assert lrs == {1e-3, 1e-2}
    assert losses(runs[0])[2] != losses(runs[1])[2]


def test_lr_schedule_warmup_then_cosine_to_the_floor():
    from train.config import ScheduleConfig
    from train.optim import lr_factor

    cfg = ScheduleConfig(warmup_steps=10, min_lr_ratio=0.1)
    warm = [lr_factor(s, 100, cfg) for s in range(10)]
    assert warm == sorted(warm) and warm[0] == pytest.approx(0.1) and warm[-1] == pytest.approx(1.0)
    assert lr_factor(10, 100, cfg) == pytest.approx(1.0)
    assert lr_factor(55, 100, cfg) == pytest.approx(0.55)  # cosine midpoint between 1 and 0.1
    assert lr_factor(100, 100, cfg) == pytest.approx(0.1)
    assert lr_factor(50, 100, ScheduleConfig(name="constant", warmup_steps=10)) == 1.0


# --- models -------------------------------------------------------------------------------------


def _tiny(arch, **extra):
    return {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        **extra,
    }


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "mistral"])
def test_random_init_families_train_a_step(tmp_path, arch, cache_dir):
    hf = ",".join(f"{k}:{v}" for k, v in _tiny(arch).items())
    run_inprocess(tmp_path, [f"model.arch={arch}", f"model.hf_config={{{hf}}}", "train.steps=1"], cache_dir)
    assert 1 in losses(tmp_path)


def test_model_from_local_hf_path_with_its_tokenizer(tmp_path, cache_dir):
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = byte_tokenizer()
    src = tmp_path / "pretrained"
    config = AutoConfig.for_model("qwen2", vocab_size=320, **_tiny("qwen2"))
    torch.manual_seed(1)
    AutoModelForCausalLM.from_config(config).save_pretrained(src)
    tok.save_pretrained(src)
    first = AutoModelForCausalLM.from_pretrained(src).state_dict()
    run = tmp_path / "run"
    run_inprocess(run, ["model=hf", f"model.path={src}", "train.steps=2", "train.ckpt_every=0"], cache_dir)
    trained = AutoModelForCausalLM.from_pretrained(run / "checkpoints" / "step_00000002" / "model")
    assert type(trained).__name__ == "Qwen2ForCausalLM"
    # started from the saved weights (not a fresh init): close to them after 2 small steps, but changed
    w0, w1 = first["model.layers.0.mlp.up_proj.weight"], trained.state_dict()["model.layers.0.mlp.up_proj.weight"]
    assert not torch.equal(w0, w1) and (w0 - w1).abs().max() < 0.05


def test_missing_model_path_names_the_key(tmp_path, cache_dir):
    with pytest.raises(ConfigError, match="model.path"):
        run_inprocess(tmp_path, ["model=hf", f"model.path={tmp_path / 'nope'}"], cache_dir)


def test_seq_len_beyond_positions_needs_rope_scaling(tmp_path, cache_dir):
    small = "model.hf_config.max_position_embeddings=32"
    with pytest.raises(ConfigError, match=r"train\.seq_len=64.*model\.rope_scaling"):
        run_inprocess(tmp_path / "a", [small], cache_dir)
    yarn = "model.rope_scaling={rope_type:yarn,factor:2.0,original_max_position_embeddings:32}"
    run_inprocess(tmp_path / "b", [small, yarn, "train.steps=1"], cache_dir)
    assert 1 in losses(tmp_path / "b")


def test_doc_mask_keeps_attention_within_documents():
    """With position_ids restarting per document, a packed row's loss on the second document equals
    that document's loss on its own: no attention crosses the boundary."""
    from train.config import AttentionConfig, ModelConfig

    tok = byte_tokenizer()
    mc = ModelConfig(hf_config=_tiny("llama"))
    torch.manual_seed(0)
    model = CausalLMLoss(build_model(mc, AttentionConfig(), build_config(mc, tok, 64)))
    x = torch.randint(0, 256, (1, 48))
    pos = torch.cat([torch.arange(20), torch.arange(28)])[None]
    only_second = torch.full_like(x, -100)
    only_second[0, 20:47] = x[0, 21:48]
    packed = model(x, only_second, pos)
    alone = model(x[:, 20:], only_second[:, 20:], torch.arange(28)[None])
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)
    leaky = model(x, only_second, torch.arange(48)[None])  # without doc positions it attends across
    assert not torch.allclose(leaky, alone, rtol=1e-3)


# --- switches -----------------------------------------------------------------------------------


@pytest.mark.parametrize("switch,rel", [("activation_checkpointing", 1e-5), ("compile", 1e-3)])
def test_switch_keeps_the_losses(tmp_path, cache_dir, switch, rel):
    run_inprocess(tmp_path / "off", ["train.steps=3"], cache_dir)
    run_inprocess(tmp_path / "on", ["train.steps=3", f"train.{switch}=true"], cache_dir)
    off, on = losses(tmp_path / "off"), losses(tmp_path / "on")
    assert sorted(off) == sorted(on) == [1, 2, 3]
    for step in off:
        assert on[step][0] == pytest.approx(off[step][0], rel=rel)


def test_wandb_offline_writes_a_local_run(tmp_path, cache_dir):
    run_inprocess(tmp_path, ["train.steps=2", "logging.wandb=offline"], cache_dir)
    assert list((tmp_path / "wandb").glob("offline-run-*")), list(tmp_path.rglob("*"))


# --- checkpoints and resume ---------------------------------------------------------------------


def _wait_for_step(run_dir, step, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        f = Path(run_dir) / "metrics.jsonl"
        if f.exists() and len(f.read_text().splitlines()) >= step:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached")


def _start(run_dir, overrides, cache_dir):
    cmd = [sys.executable, "-m", "train", *SMOKE, f"data.cache_dir={cache_dir}", f"hydra.run.dir={run_dir}", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_stopped_and_killed_runs_resume_bit_identically(tmp_path, cache_dir):
    """SIGTERM mid-run saves and exits cleanly; SIGKILL loses only the steps since the last
    checkpoint; either way, resuming reproduces the uninterrupted run's losses exactly."""
    common = ["train.steps=8", "train.ckpt_every=3", "train.grad_accum=2", "data.shuffle_buffer=8"]
    run_cli(tmp_path / "ref", common, cache_dir)
    ref = losses(tmp_path / "ref")
    assert len(ref) == 8 and len({v[0] for v in ref.values()}) == 8

    # SIGTERM / SIGINT after step 2 (between periodic checkpoints): save, exit 0
    for sig in (signal.SIGTERM, signal.SIGINT):
        run = tmp_path / sig.name
        proc = _start(run, common, cache_dir)
        _wait_for_step(run, 2, proc)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
        stopped_at = max(losses(run))
        assert stopped_at < 8 and (run / "checkpoints" / f"step_{stopped_at:08d}").is_dir(), out
        run_cli(run, common, cache_dir)  # resume=auto by default

    # SIGKILL after step 4: the last complete checkpoint survives (step 3, or step 6 when the kill lands after its
    # save: steps take ~30 ms, so which one is a race); a half-written one is ignored
    kill = tmp_path / "kill"
    proc = _start(kill, common, cache_dir)
    _wait_for_step(kill, 4, proc)
    proc.kill()
    proc.communicate(timeout=60)
    assert max(losses(kill)) < 8
    saved = sorted(int(p.name[5:]) for p in (kill / "checkpoints").glob("step_????????") if p.is_dir())
    assert saved and saved[-1] in (3, 6), saved
    partial = kill / "checkpoints" / "step_00000007.tmp"
    partial.mkdir()
    (partial / "optimizer.pt").write_bytes(b"truncated")
    out = run_cli(kill, common, cache_dir)
    assert "resumed from" in out.stderr and f"step_{saved[-1]:08d} at step {saved[-1]}" in out.stderr
    assert not partial.exists()

    for resumed in (tmp_path / "SIGTERM", tmp_path / "SIGINT", kill):
        assert losses(resumed) == ref  # bit-identical floats, every step


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, cache_dir, monkeypatch):
    calls = {"n": 0}
    forward = CausalLMLoss.forward

    def poisoned(self, *args, **kw):
        calls["n"] += 1
        out = forward(self, *args, **kw)
        return out * float("nan") if calls["n"] == 3 else out

    monkeypatch.setattr(CausalLMLoss, "forward", poisoned)
    with pytest.raises(NonFiniteLoss, match=r"step 3.*step_00000002"):
        run_inprocess(tmp_path, ["train.steps=6", "train.ckpt_every=2"], cache_dir)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000002"]
    assert max(losses(tmp_path)) == 2  # the bad step was not logged as a result


def test_stop_at_loss_saves_and_stops_at_the_first_window_at_or_below_it(tmp_path, cache_dir):
    run_inprocess(tmp_path / "full", ["train.steps=8", "train.ckpt_every=0"], cache_dir)
    full = [json.loads(line)["loss"] for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    window = 3
    means = [sum(full[s - window : s]) / window for s in range(window, len(full) + 1)]  # means[i]: up to step i + 3
    threshold = sorted(means)[len(means) // 2]  # crossed partway through, whatever the curve's shape
    expected = window + next(i for i, m in enumerate(means) if m <= threshold)
    assert expected < 8
    overrides = ["train.steps=8", "train.ckpt_every=0", f"train.stop_at_loss={threshold!r}"]
    last = run_inprocess(tmp_path / "stop", [*overrides, f"train.stop_at_loss_window={window}"], cache_dir)
    assert Path(last).name == f"step_{expected:08d}"
    logged = [json.loads(line)["loss"] for line in (tmp_path / "stop" / "metrics.jsonl").read_text().splitlines()]
    assert logged == full[:expected]  # the same run, cut where the window's mean first reached the threshold


def test_resume_from_incompatible_checkpoint_names_the_key(tmp_path, cache_dir):
    run_inprocess(tmp_path, ["train.steps=2"], cache_dir)
    before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    with pytest.raises(CheckpointError, match=r"different model.*model\.\*"):
        run_inprocess(tmp_path, ["train.steps=4", "model.hf_config.intermediate_size=64"], cache_dir)
    with pytest.raises(CheckpointError, match=r"train\.seq_len=64"):
        run_inprocess(tmp_path, ["train.steps=4", "train.seq_len=32"], cache_dir)
    with pytest.raises(CheckpointError, match=r"train\.grad_accum"):
        run_inprocess(tmp_path, ["train.steps=4", "train.grad_accum=3"], cache_dir)
    with pytest.raises(CheckpointError, match="resume=auto"):
        run_inprocess(tmp_path, ["train.steps=4", "resume=none"], cache_dir)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before  # nothing lost


@pytest.mark.parametrize("case", ["missing", "empty", "all_corrupt"])
def test_data_errors_exit_cleanly_from_the_cli(tmp_path, cache_dir, case):
    path = tmp_path / "corpus.jsonl"
    if case == "empty":
        path.write_text("")
    elif case == "all_corrupt":
        path.write_text('{"text": unquoted}\n{"body": "no text field"}\n')
    out = run_cli(tmp_path / "run", ["data=files", f"data.paths=[{path}]"], cache_dir, check=False)
    text = out.stderr + out.stdout
    assert out.returncode == 2, text[-3000:]
    assert "data.paths" in text and "Traceback" not in text
    if case == "missing":
        assert "corpus.jsonl" in text
    if case == "all_corrupt":
        assert "corpus.jsonl:1: skipped corrupt jsonl line" in text
        assert "corpus.jsonl:2: skipped corrupt jsonl line" in text and "data.text_field" in text
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_nope_layers_drop_rotary_positions_and_survive_save_and_load(tmp_path):
    """model.nope_layers: those layers attend without RoPE. With every layer NoPE and no doc boundaries the
    logits ignore the position ids; with RoPE they do not. The list travels in config.json, and the dense and
    the SSA loaders both restore it. A layer index out of range names the key."""
    from transformers import AutoModelForCausalLM

    from ssa_kernels.hf import apply_nope_layers, convert_to_ssa
    from ssa_kernels.hf import from_pretrained as ssa_from_pretrained
    from train.config import AttentionConfig, ModelConfig

    tok = byte_tokenizer()
    x = torch.randint(0, 256, (1, 40))
    pos, moved = torch.arange(40)[None], (torch.arange(40) * 7 + 3)[None]  # increasing: no doc restarts

    def logits(model, p):
        with torch.no_grad():
            return model(input_ids=x, position_ids=p).logits

    mc = ModelConfig(hf_config=_tiny("llama"))
    torch.manual_seed(0)
    rope = build_model(mc, AttentionConfig(), build_config(mc, tok, 64))
    assert not torch.allclose(logits(rope, pos), logits(rope, moved), atol=1e-4)
    layers = rope.config.num_hidden_layers
    nope_cfg = ModelConfig(hf_config=_tiny("llama"), nope_layers=list(range(layers)))
    torch.manual_seed(0)
    nope = build_model(nope_cfg, AttentionConfig(), build_config(nope_cfg, tok, 64))
    torch.testing.assert_close(logits(nope, pos), logits(nope, moved), atol=1e-5, rtol=1e-5)
    # one NoPE layer: only that layer's attention carries the hook
    one = ModelConfig(hf_config=_tiny("llama"), nope_layers=[1])
    model = build_model(one, AttentionConfig(), build_config(one, tok, 64))
    hooked = [hasattr(layer.self_attn, "_nope_hook") for layer in model.model.layers]
    assert hooked == [i == 1 for i in range(layers)] and model.config.nope_layers == [1]
    apply_nope_layers(model)  # idempotent: still one hook
    assert len(model.model.layers[1].self_attn._forward_pre_hooks) == 1
    # save, then load dense (AutoModel + apply_nope_layers, and build_model from model.path) and as SSA
    nope.save_pretrained(tmp_path / "dense")
    tok.save_pretrained(tmp_path / "dense")
    again = apply_nope_layers(AutoModelForCausalLM.from_pretrained(tmp_path / "dense"))
    torch.testing.assert_close(logits(again, moved), logits(nope, pos), atol=1e-5, rtol=1e-5)
    from_path = ModelConfig(path=str(tmp_path / "dense"))
    built = build_model(from_path, AttentionConfig(), build_config(from_path, tok, 64))
    assert built.config.nope_layers == list(range(layers))
    torch.testing.assert_close(logits(built, moved), logits(nope, pos), atol=1e-5, rtol=1e-5)
    ssa = convert_to_ssa(nope)
    ssa.save_pretrained(tmp_path / "ssa")
    loaded = ssa_from_pretrained(tmp_path / "ssa")
    assert all(hasattr(layer.self_attn, "_nope_hook") for layer in loaded.model.layers)
    with pytest.raises(ConfigError, match=r"model\.nope_layers"):
        bad = ModelConfig(hf_config=_tiny("llama"), nope_layers=[layers])
        build_config(bad, tok, 64)
