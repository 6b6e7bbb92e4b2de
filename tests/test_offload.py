"""Rung ``offload`` (DeepSpeed ZeRO-3, parameters and optimizer on the host) on CPU with gloo.

- Optimizer steps through the rung's runner equal the single-process torch run (loss, gradient norm and
  the weights after the steps, fp32, 1e-5) for dense and SSA attention on packed multi-document rows, at
  world 1 and 2, with data parallelism (dp=2: one row each) and with Ulysses inside (sp=2), one case with
  activation checkpointing; the partitioned state saved and loaded by every rank continues bit for bit.
- ``python -m train parallel=offload`` logs the single-process run's loss and gradient norm at every step,
  a SIGKILLed run resumes from its last checkpoint with the uninterrupted run's numbers bit for bit, and the
  checkpoint's model loads with plain transformers (no DeepSpeed) with the single-process run's weights.
- ``parallel.tiled_layer`` under offload (the decoder layer a ZeRO-3 leaf) equals it alike.
- ``parallel=nested_offload`` (the same with activation checkpointing, layer inputs on the host and a tiled
  MLP) equals the plain single-process run alike, with data parallelism and with Ulysses.
- Bad settings are refused with the key to change.

Every parameter is partitioned (``parallel.offload.persistence_threshold=0``): with DeepSpeed's default the
tiny test models would stay whole on every rank and the gather/partition path would go untested.
"""

from __future__ import annotations

import faulthandler
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from parallel import ParallelConfig, ParallelDims, build_runner, parallelize, weights_dtype
from parallel.offload import OffloadConfig
from parallel.runner import StepSettings
from tests.test_distributed import TIMEOUT_S, Job, check_ok, job_env, run_workers, wait_all
from tests.test_train import _wait_for_step, compose_cfg, losses, run_inprocess
from tests.test_ulysses import packed_batch, tiny_model
from train.checkpoint import CheckpointError
from train.config import ConfigError, OptimizerConfig, ScheduleConfig, to_config
from train.optim import build_optimizer, build_scheduler

STEPS_PER_CASE = 3
# Between the steps' gradient norms (0.84..0.86): clipping scales some steps and not others, which AdamW's
# update sees (it would not see one constant scale).
CLIP = 0.85
OPTIM = OptimizerConfig(lr=3e-3)
SCHEDULE = ScheduleConfig(warmup_steps=2)
PARTITION_ALL = OffloadConfig(optimizer="torch", persistence_threshold=0)
# (attention, layout, pieces). layout: dp (each rank one of the two rows) or sp (Ulysses, both rows, each rank a
# sequence shard). pieces: "" (none), "ac" (activation checkpointing), "nested" (parallel=nested_offload:
# AC with the layer inputs on the host and the MLP in tiles of TILE tokens), "layer" (AC and parallel.tiled_layer=TILE:
# the whole decoder layer a ZeRO-3 leaf whose weights an autograd.Function reads again in the backward)
CASES = {
    1: [("sdpa", "dp", ""), ("ssa", "dp", "")],
    2: [
        ("sdpa", "dp", ""),
        ("ssa", "dp", "ac"),
        ("ssa", "dp", "nested"),
        ("sdpa", "sp", "nested"),
        ("ssa", "sp", ""),
        ("ssa", "dp", "layer"),
    ],
}
TILE = 48  # the MLP of T=128 tokens in three tiles, the last one ragged (sp=2: 64 tokens, a ragged second)
T = 128
DOCS = (20, 1000)  # the second document is long enough for SSA to choose (2 of up to 6 earlier blocks)


def _batch(step: int) -> dict[str, torch.Tensor]:
    """Two packed rows of two documents (tests/test_ulysses.py), new tokens at each step."""
    batch = packed_batch(T, docs=DOCS)
    g = torch.Generator().manual_seed(100 + step)
    ids = torch.randint(1, 128, (2, T + 1), generator=g)
    keep = batch["labels"] != -100
    return {**batch, "input_ids": ids[:, :-1], "labels": torch.where(keep, ids[:, 1:], -100)}


def _reference(attention: str, ac: bool) -> list[tuple[float, float, dict[str, torch.Tensor]]]:
    """Single process, torch AdamW, both rows: (loss, grad norm, weights) after each step."""
    model = tiny_model(attention)
    dims = ParallelDims(1, 0, 0, 1, 1, torch.device("cpu"))
    run = parallelize(model, model.decoder_layers, dims, ParallelConfig(), activation_checkpointing=ac)
    optimizer = build_optimizer(run, OPTIM)
    scheduler = build_scheduler(optimizer, 10, SCHEDULE)
    out = []
    for i in range(STEPS_PER_CASE):
        batch = _batch(i)
        n_valid = (batch["labels"] != -100).sum()
        loss = run(**batch)
        (loss / n_valid).backward()
        norm = torch.nn.utils.clip_grad_norm_(run.parameters(), CLIP)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        out.append(
            (loss.item() / n_valid.item(), norm.item(), {k: v.clone() for k, v in model.lm.state_dict().items()})
        )
    return out


def _offload_runner(attention: str, layout: str, pieces: str, dims: ParallelDims):
    model = tiny_model(attention)
    nested = pieces == "nested"
    cfg = ParallelConfig(name="nested_offload" if nested else "offload", sp=dims.sp, offload=PARTITION_ALL,
                         tiled_mlp=TILE if nested else 0, offload_activations=nested,
                         tiled_layer=TILE if pieces == "layer" else 0)  # fmt: skip
    module = parallelize(model, model.decoder_layers, dims, cfg, activation_checkpointing=bool(pieces))
    rows = 2 if layout == "sp" else 1
    return model, build_runner(
        module,
        dims,
        cfg,
        lambda m: build_optimizer(m, OPTIM),
        lambda o: build_scheduler(o, 10, SCHEDULE),
        StepSettings(grad_clip=CLIP, micro_batch=rows, grad_accum=1, bf16=False),
    )


def _step(runner, batch: dict[str, torch.Tensor], n_valid: torch.Tensor, world: int) -> tuple[float, float]:
    """One step as the trainer runs it: this rank's loss sum x world / global valid tokens."""
    local = runner.module(**batch)
    runner.backward(local * world / n_valid)
    total = local.detach().clone()
    dist.all_reduce(total)
    return total.item() / n_valid.item(), runner.step().item()


def _check_case(attention: str, layout: str, pieces: str, dims: ParallelDims, ref, tmp: Path) -> None:
    what = f"{attention} {layout} pieces={pieces!r} world={dims.world} rank={dims.rank}"
    model, runner = _offload_runner(attention, layout, pieces, dims)
    for i, (ref_loss, ref_norm, ref_weights) in enumerate(ref):
        full = _batch(i)
        n_valid = (full["labels"] != -100).sum()
        batch = full if layout == "sp" else {k: v[dims.rank :: dims.world] for k, v in full.items()}
        if i == STEPS_PER_CASE - 1 and layout == "dp":  # every rank writes its partition; a new runner reads them
            runner.save_state(tmp)
            restored_model, restored = _offload_runner(attention, layout, pieces, dims)
            restored.load_state(tmp)
            restored.scheduler.load_state_dict(runner.scheduler.state_dict())
            loss, norm = _step(runner, batch, n_valid, dims.world)
            assert _step(restored, batch, n_valid, dims.world) == (loss, norm), what
            weights = runner.full_state_dict(model.lm)
            again = restored.full_state_dict(restored_model.lm)
            if dims.is_main:
                assert all(torch.equal(weights[k], again[k]) for k in weights), what
        else:
            loss, norm = _step(runner, batch, n_valid, dims.world)
            weights = runner.full_state_dict(model.lm)  # collective
        at, close = f"{what} step {i + 1}", dict(rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(loss, ref_loss, **close, msg=lambda m, at=at: f"{at} loss: {m}")
        torch.testing.assert_close(norm, ref_norm, **close, msg=lambda m, at=at: f"{at} grad norm: {m}")
        if dims.is_main:
            assert sorted(weights) == sorted(ref_weights), what
            for k, v in ref_weights.items():
                torch.testing.assert_close(weights[k], v, **close, msg=lambda m, at=at, k=k: f"{at} {k}: {m}")


def _worker(world: int, tmp: Path) -> None:
    """One torchrun rank: every case of this world size against this process's single-process run."""
    faulthandler.dump_traceback_later(TIMEOUT_S - 20, exit=True)  # a hang fails with every thread's stack
    torch.set_num_threads(1)
    refs = {(a, bool(pieces)): _reference(a, bool(pieces)) for a, _, pieces in CASES[world]}
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    try:
        for attention, layout, pieces in CASES[world]:
            sp = world if layout == "sp" else 1
            group = dist.new_group(list(range(world))) if sp > 1 else None  # sp == world: one SP group
            dims = ParallelDims(world, rank, rank, world // sp, 1, torch.device("cpu"), sp, group, local_world=world)
            ref = refs[(attention, bool(pieces))]  # single process, plain MLP, AC as the case
            _check_case(attention, layout, pieces, dims, ref, tmp / f"{attention}-{layout}-{pieces}")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [1, 2])
def test_offload_matches_single_process(world, tmp_path):
    run_workers(__file__, world, str(world), str(tmp_path))


# --- the trainer under offload --------------------------------------------------------------------

STEPS = 20  # checkpoints every 5; the kill lands after step 12
EXACT_STEPS = 12
SSA = ["attention=ssa", "attention.ssa.router=attention", "attention.ssa.block_size=16",
       "attention.ssa.local_window=32", "attention.ssa.topk_blocks=2", "attention.ssa.top_nodes=4"]  # fmt: skip


RESUME_KEYS = {"parallel", "train.seq_len", "train.grad_accum", *(o.split("=")[0] for o in SSA)}


def trainer_cmd(parallel: str, run_dir: Path, data_cache: Path, steps: int = STEPS, extra: tuple = ()) -> list[str]:
    return [sys.executable, "-m", "train", "experiment=smoke", f"parallel={parallel}", "parallel.device=cpu",
            "parallel.offload.persistence_threshold=0", f"train.steps={steps}", "train.ckpt_every=5",
            "train.seq_len=128", "train.grad_accum=2", "logging.wandb=disabled", f"data.cache_dir={data_cache}",
            f"hydra.run.dir={run_dir}", *SSA, *extra]  # fmt: skip


# nested_offload: activation checkpointing with the layer inputs on the host and the MLP in tiles of 32 of the 128
# tokens (its default tile, 16384, would leave one tile)
RUNG_EXTRA = {"offload": (), "nested_offload": ("train.activation_checkpointing=true", "parallel.tiled_mlp=32")}


@pytest.mark.parametrize("rung", list(RUNG_EXTRA))
def test_trainer_under_offload_matches_single_and_resumes_after_a_kill(tmp_path, data_cache, rung):
    """Each step's loss and gradient norm equal the single-process run's (1e-5, SSA, two accumulated
    micro-batches); a run SIGKILLed after step 12 resumes from its step-10 checkpoint and logs the
    uninterrupted run's numbers bit for bit; the checkpoint's model loads without DeepSpeed. Under
    ``offload`` and under ``nested_offload`` (the single-process run without its pieces)."""
    ref_dir, single_dir, kill_dir = tmp_path / "offload", tmp_path / "single", tmp_path / "kill"
    extra = RUNG_EXTRA[rung]
    jobs = [Job(trainer_cmd(rung, ref_dir, data_cache, extra=extra), job_env(), tmp_path / "offload.log"),
            Job(trainer_cmd("single", single_dir, data_cache), job_env(), tmp_path / "single.log")]  # fmt: skip
    kill = Job(trainer_cmd(rung, kill_dir, data_cache, extra=extra), job_env(), tmp_path / "kill.log")
    try:
        _wait_for_step(kill_dir, 12, kill.proc, TIMEOUT_S)
    finally:
        kill.kill()
    for rc, out in wait_all(*jobs):
        check_ok(rc, out)
    assert "offload: ZeRO-3 over 1 ranks" in (tmp_path / "offload.log").read_text()
    ref, single = losses(ref_dir), losses(single_dir)
    assert sorted(ref) == sorted(single) == list(range(1, STEPS + 1))
    # DeepSpeed's clipping divides by the clip coefficient where torch multiplies by its inverse: a rounding
    # difference in every update, which AdamW amplifies. The loss stays within 1e-5 (measured 2.3e-7) at every
    # step; the gradient norm, more sensitive to the weights, within 1e-5 for the first EXACT_STEPS (measured
    # 1.7e-6) and 1e-4 after (measured 2.4e-5 by step 30).
    for key, late_rtol in ((0, 1e-5), (1, 1e-4)):  # loss, grad_norm
        for steps, rtol in ((range(1, EXACT_STEPS + 1), 1e-5), (range(EXACT_STEPS + 1, STEPS + 1), late_rtol)):
            torch.testing.assert_close(
                torch.tensor([ref[s][key] for s in steps], dtype=torch.float64),
                torch.tensor([single[s][key] for s in steps], dtype=torch.float64),
                rtol=rtol, atol=0, msg=lambda m, key=key: f"{('loss', 'grad_norm')[key]}: {m}",
            )  # fmt: skip
    assert ref[STEPS][0] < ref[1][0]  # it learns: equal constants would prove nothing

    saved = sorted(int(p.name.split("_")[1]) for p in (kill_dir / "checkpoints").glob("step_????????"))
    assert saved and saved[-1] < STEPS, saved  # killed mid-run
    resume = Job(trainer_cmd(rung, kill_dir, data_cache, extra=extra), job_env(), tmp_path / "resume.log")
    rc, out = wait_all(resume)[0]
    check_ok(rc, out)
    assert f"step_{saved[-1]:08d} at step {saved[-1]}" in out, out[-6000:]
    assert losses(kill_dir) == ref  # bit-identical floats, every step

    # the HF model of the last checkpoint: plain transformers, the single-process run's weights
    from transformers import AutoModelForCausalLM

    final = f"checkpoints/step_{STEPS:08d}/model"
    offloaded = AutoModelForCausalLM.from_pretrained(ref_dir / final).state_dict()
    plain = AutoModelForCausalLM.from_pretrained(single_dir / final).state_dict()
    assert sorted(offloaded) == sorted(plain)
    for k in plain:
        torch.testing.assert_close(offloaded[k], plain[k], rtol=1e-4, atol=1e-4, msg=lambda m, k=k: f"{k}: {m}")

    # ZeRO-3 partitions are not torch's optimizer state: resuming them under another rung stops before a step
    same = [o for o in trainer_cmd("single", kill_dir, data_cache)[3:] if o.split("=")[0] in RESUME_KEYS]
    with pytest.raises(CheckpointError, match=r"optimizer state of 'deepspeed zero3, 1 ranks'.*parallel\.name"):
        run_inprocess(kill_dir, [*same, f"train.steps={STEPS + 2}"], data_cache)
    assert max(losses(kill_dir)) == STEPS


def test_bf16_build_trains_the_fp32_builds_model(tmp_path, data_cache):
    """Under bf16 the offload rung builds the model in bf16 (half the host memory per process before ZeRO-3
    partitions it): DeepSpeed rounds an fp32 build to the same bf16 weights and makes its fp32 master weights
    from them, so every step's loss and gradient norm, and the saved weights, equal the fp32 build's bit for
    bit, and a run resumed from a checkpoint continues bit for bit. The checkpoint's config says float32, the
    saved master weights' dtype, so that a plain from_pretrained loads them unrounded."""
    from safetensors.torch import load_file

    runs = {b: tmp_path / b for b in ("auto", "fp32")}
    jobs = [Job(trainer_cmd("offload", d, data_cache, 7, ("train.precision=bf16", f"parallel.offload.build_dtype={b}")),
                job_env(), tmp_path / f"{b}.log") for b, d in runs.items()]  # fmt: skip
    for rc, out in wait_all(*jobs):
        check_ok(rc, out)
    assert "built in torch.bfloat16" in (tmp_path / "auto.log").read_text()
    assert "built in" not in (tmp_path / "fp32.log").read_text()
    bf16_build, fp32_build = losses(runs["auto"]), losses(runs["fp32"])
    assert sorted(bf16_build) == list(range(1, 8)) and bf16_build == fp32_build  # bit for bit, every step
    assert bf16_build[7][0] < bf16_build[1][0]  # it learns
    # resumed from the step-5 checkpoint (its fp32 weights loaded into the bf16 build, then DeepSpeed's partitions),
    # steps 6 and 7 are the uninterrupted run's bit for bit
    resumed = tmp_path / "resumed"
    extra = ("train.precision=bf16", f"resume={runs['auto'] / 'checkpoints/step_00000005'}")
    check_ok(*wait_all(Job(trainer_cmd("offload", resumed, data_cache, 7, extra), job_env(), tmp_path / "r.log"))[0])
    assert losses(resumed) == {s: bf16_build[s] for s in (6, 7)}
    model = [runs[b] / "checkpoints/step_00000007/model" for b in runs]
    weights = [load_file(m / "model.safetensors") for m in model]
    assert sorted(weights[0]) == sorted(weights[1])
    for k, w in weights[0].items():
        assert w.dtype == torch.float32 and torch.equal(w, weights[1][k]), k
    # fp32 master weights, not bf16 values: some are not representable in bf16
    assert any(not torch.equal(w, w.bfloat16().float()) for w in weights[0].values())
    for m in model:
        assert json.loads((m / "config.json").read_text())["dtype"] == "float32"


def test_bench_host_build_measures_both_builds(tmp_path):
    """scripts/bench_host_build.py on the tiny model, one process: a row per build with the node's sampled peak
    until DeepSpeed's engine is built, merged into the results file by (model, overrides, processes, build)."""
    from tests.scripts_loader import load_script

    bench = load_script("bench_host_build")
    args = ["--model", "tiny", "--nproc", "1", "--out", str(tmp_path), "--timeout-s", "300"]
    bench.main(args)
    bench.main([*args, "--model-overrides", "model.hf_config.num_hidden_layers=3"])
    doc = json.loads((tmp_path / "host-build-cpu.json").read_text())
    rows = {(r["build_dtype"], len(r["model_overrides"])): r for r in doc["results"]}
    assert sorted(rows) == [("bf16", 0), ("bf16", 1), ("fp32", 0), ("fp32", 1)]
    for n in (0, 1):
        fp32, bf16 = rows["fp32", n], rows["bf16", n]
        assert fp32["params"] == bf16["params"] > 0
        for row, nbytes in ((fp32, 4), (bf16, 2)):
            assert row["planned_build_gib"] == round(nbytes * row["params"] / 2**30, 2)
        assert 0.1 < bf16["peak_host_gib"] < 8 and 0.1 < fp32["peak_host_gib"] < 8
        assert "parallel.offload.build_dtype=auto" in bf16["command"]
    assert rows["fp32", 1]["params"] < rows["fp32", 0]["params"]  # the override (3 layers, not 4) reached the model


def test_weights_dtype_is_bf16_only_where_the_rung_casts_to_it():
    def dtype(overrides, bf16):
        return weights_dtype(to_config(compose_cfg(overrides)).parallel, bf16)

    assert dtype(["parallel=offload"], True) == torch.bfloat16
    assert dtype(["parallel=nested_offload", "train.activation_checkpointing=true"], True) == torch.bfloat16
    assert dtype(["parallel=offload"], False) == torch.float32
    assert dtype(["parallel=offload", "parallel.offload.build_dtype=fp32"], True) == torch.float32
    for rung in ("single", "ddp", "ulysses", "ring"):  # torch's optimizer steps the built (fp32 master) weights
        assert dtype([f"parallel={rung}"], True) == torch.float32, rung


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["parallel=offload", "parallel.offload.optimizer=adam"], "parallel.offload.optimizer"),
        (["parallel=offload", "parallel.offload.persistence_threshold=-1"], "parallel.offload.persistence_threshold"),
        (["parallel=offload", "parallel.offload.build_dtype=bf16"], "parallel.offload.build_dtype"),
        (["parallel=offload", "train.compile=true"], "train.compile"),
        (["parallel=nested_offload"], "train.activation_checkpointing=true"),
        (["parallel=nested_offload", "train.activation_checkpointing=true", "parallel.tiled_mlp=0"],
         "parallel.tiled_mlp"),
    ],
)  # fmt: skip
def test_bad_offload_settings_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        to_config(compose_cfg(overrides))


def test_nested_offload_composes_the_pieces():
    p = to_config(compose_cfg(["parallel=nested_offload", "train.activation_checkpointing=true"])).parallel
    assert (p.name, p.offload_activations, p.tiled_mlp > 0, p.offload.optimizer) == (
        "nested_offload",
        True,
        True,
        "auto",
    )


if __name__ == "__main__":
    _worker(int(sys.argv[1]), Path(sys.argv[2]))
