"""Rung ``ulysses`` on CPU with gloo: loss and every parameter gradient with sequence parallelism
equal the single-process run (fp32, 1e-5) for dense and SSA attention on packed multi-document
rows, with kv-head repetition (sp=4 > 2 kv heads), padding and PoSE position skips (train.position_skip);
and a trainer run under torchrun equals
the single-process run step by step and resumes after a SIGKILL with the uninterrupted run's losses.

Workers run under ``torchrun --standalone`` (the port is chosen at run time), each in a subprocess
with a timeout, as in tests/test_distributed.py; each rank computes the single-process reference itself.
"""

from __future__ import annotations

import dataclasses
import faulthandler
import gc
import logging
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from transformers import LlamaConfig, LlamaForCausalLM

from parallel.dims import ParallelDims, ParallelError
from parallel.tiled_layer import apply_tiled_layer
from parallel.ulysses import apply_ulysses, kv_repeat_for
from ssa_kernels.config import SSAConfig
from ssa_kernels.hf import convert_to_ssa
from tests.test_distributed import TIMEOUT_S, Job, check_ok, job_env, run_workers, torchrun, wait_all
from tests.test_train import _wait_for_step, losses
from train.model import CausalLMLoss, attach_position_skip

SSA = SSAConfig(block_size=16, topk_blocks=2, local_window=32, top_nodes=4, router="attention", backend="reference")
DOCS = (37, 50, 9, 1000)  # document lengths of the packed row (the last one is cut at T)
# The learned router's case: a routing gradient exists only where a block has more routed candidates than
# topk_blocks (ssa_kernels._routed_slots), which the short documents above never give.
# "ssa_contested" is the attention router on that row: under sp=4 the 2 kv heads are repeated, and each copy must
# still route with the mean query of all of its group's heads (parallel.ulysses.group_query_means).
DOCS_FOR = {"ssa_learned": (9, 1000), "ssa_contested": (9, 1000), "ssa_learned_tiled": (9, 1000)}
CASES = [  # (attention, T): T=112 and T=127 are padded (to 128) under sp=2 / sp=4
    ("sdpa", 128),
    ("ssa", 128),
    ("sdpa", 127),
    ("ssa", 112),
    ("ssa_learned", 112),  # the learned router: block means all-to-all'd like k
    ("ssa_contested", 112),  # the attention router where blocks compete for the routed slots
    ("ssa_skip", 127),  # train.position_skip: every rank draws the same skips for its shard's global positions
    ("ssa_learned_tiled", 112),  # parallel.tiled_layer (tiles of 16): q/k/v and the router's input made per tile
]


def tiny_model(attention: str) -> CausalLMLoss:
    """4 query heads over 2 kv heads; one kv head (MQA) for ``attention`` ending in "_mqa"."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1 if attention.endswith("_mqa") else 2, max_position_embeddings=256,
        attention_dropout=0.0,
    )  # fmt: skip
    lm = LlamaForCausalLM._from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    if attention.startswith("ssa"):
        cfg = dataclasses.replace(SSA, router="learned" if attention.startswith("ssa_learned") else "attention")
        convert_to_ssa(lm, cfg)
    if attention.endswith("_tiled"):  # the single-process reference tiles too (equal to untiled: test_tiled_layer)
        apply_tiled_layer(lm.model.layers, 16)
    if attention.endswith("_skip"):
        attach_position_skip(lm.train(), 4096, 128, seed=0).begin_step(1)
    return CausalLMLoss(lm)


def packed_batch(t: int, rows: int = 2, docs: tuple[int, ...] = DOCS) -> dict[str, torch.Tensor]:
    """Rows of several documents: positions restart at each, no label crosses a boundary."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 128, (rows, t + 1), generator=g)
    pos = torch.cat([torch.arange(n) for n in docs])[:t]
    starts = (pos == 0).nonzero().flatten()
    labels = ids[:, 1:].clone()
    labels[:, starts[1:] - 1] = -100  # the last token of a document has no target
    return {"input_ids": ids[:, :-1], "labels": labels, "position_ids": pos.expand(rows, -1).clone()}


def reference(attention: str, t: int):
    model = tiny_model(attention)
    loss = model(**packed_batch(t, docs=DOCS_FOR.get(attention, DOCS)))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    routers = [g for n, g in grads.items() if ".ssa_router." in n]
    assert all(g.abs().max() > 0 for g in routers), attention  # else their equality would prove nothing
    return loss.detach(), grads


def _worker(sp: int) -> None:
    """One torchrun rank: every case under sp, compared with this process's single-process run."""
    faulthandler.dump_traceback_later(TIMEOUT_S - 20, exit=True)  # a hang fails with every thread's stack
    torch.set_num_threads(1)
    # DDP leaves every rank with the same gradients and the loss is all-reduced, so rank 0 alone computes the
    # single-process references and compares (each of 4 ranks doing it on 2 cores ran past the timeout)
    rank0 = os.environ.get("RANK") == "0"
    refs = {case: reference(*case) for case in CASES} if rank0 else {}
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        groups = [dist.new_group(list(range(s, s + sp))) for s in range(0, world, sp)]
        dims = ParallelDims(
            world, rank, rank, world // sp, 1, torch.device("cpu"), sp, groups[rank // sp], local_world=world
        )
        records: list[str] = []
        handler = logging.Handler()
        handler.emit = lambda r: records.append(r.getMessage())
        logging.getLogger("parallel.ulysses").addHandler(handler)
        logging.getLogger("parallel.ulysses").setLevel(logging.INFO)
        for attention, t in CASES:
            records.clear()
            model = apply_ulysses(tiny_model(attention), dims)
            local = model(**packed_batch(t, docs=DOCS_FOR.get(attention, DOCS)))  # this rank's shard's loss sum
            (local * world).backward()  # DDP averages over the world: the sum of every shard's gradient
            total = local.detach().clone()
            dist.all_reduce(total)
            what = f"{attention} T={t} sp={sp} rank={rank}"
            multiple = sp * (SSA.block_size if attention.startswith("ssa") else 1)
            if t % multiple:
                assert any("padded to" in r for r in records), (what, records)
            if sp > 2:
                assert any("kv heads repeated 2x" in r for r in records), (what, records)
            if not rank0:
                continue
            ref_loss, ref_grads = refs[(attention, t)]
            torch.testing.assert_close(total, ref_loss, rtol=1e-5, atol=1e-5, msg=lambda m, w=what: f"{w} loss: {m}")
            for name, p in model.module.module.named_parameters():
                torch.testing.assert_close(
                    p.grad, ref_grads[name], rtol=1e-5, atol=1e-5, msg=lambda m, n=name, w=what: f"{w} {n}: {m}"
                )
    finally:
        # Drop DDP and the subgroups while the default group exists: left to the interpreter, their destructors
        # ran after destroy_process_group and one of four ranks hung at exit about one run in five
        # (faulthandler showed it in the call of _worker with no Python frame below).
        model = dims = groups = None  # noqa: F841
        gc.collect()
        dist.destroy_process_group()


@pytest.mark.parametrize("sp", [2, 4])
def test_ulysses_matches_single_process(sp):
    run_workers(__file__, sp, str(sp))


def test_heads_not_divisible_names_the_key():
    with pytest.raises(ParallelError, match="parallel.sp=3 must divide the model's 4 attention heads"):
        kv_repeat_for(4, 2, 3)
    assert kv_repeat_for(4, 2, 4) == 2 and kv_repeat_for(8, 8, 4) == 1


# --- the trainer under ulysses -------------------------------------------------------------------

STEPS = 30  # ~0.1 s each: the kill after step 12 lands well before the end; checkpoints every 10
SEQ_LEN = {"ssa": (112, 128), "dense": (111, 112)}  # (train.seq_len, padded under sp=2)
TRAINER_ATTENTION = {
    "ssa": ["attention=ssa", "attention.ssa.router=attention", "attention.ssa.block_size=16",
            "attention.ssa.local_window=32", "attention.ssa.topk_blocks=2", "attention.ssa.top_nodes=4"],
    "dense": ["attention=dense"],
}  # fmt: skip


def trainer_cmd(
    parallel: str, run_dir: Path, data_cache: Path, attention: str, *extra: str, nproc: int = 2
) -> list[str]:
    # rows padded under sp=2: ssa 112 -> 128 (a whole block of padding, sp x block 16), dense 111 -> 112
    args = ["-m", "train", "experiment=smoke", f"parallel={parallel}", "parallel.device=cpu", f"train.steps={STEPS}",
            "train.ckpt_every=10", f"train.seq_len={SEQ_LEN[attention][0]}", "logging.wandb=disabled", f"data.cache_dir={data_cache}",
            f"hydra.run.dir={run_dir}", *TRAINER_ATTENTION[attention], *extra]  # fmt: skip
    if parallel == "single":
        return [sys.executable, *args]
    return [*torchrun(nproc), *args, "parallel.sp=2"]


def kill_at_step(cmd: list[str], run_dir: Path, step: int, log: Path) -> None:
    """Start ``cmd`` and SIGKILL it, torchrun and every worker at once, once ``step`` is logged."""
    job = Job(cmd, job_env(), log)
    try:
        _wait_for_step(run_dir, step, job.proc, TIMEOUT_S)
    finally:
        job.kill()


@pytest.mark.parametrize("attention", ["ssa", "dense"])
def test_trainer_under_ulysses_matches_single_and_resumes_after_a_kill(tmp_path, data_cache, attention):
    """``python -m train parallel=ulysses parallel.sp=2`` under torchrun: each step's loss and gradient norm
    equal the single-process run's (1e-5); a run SIGKILLed after step 12 resumes from its last checkpoint
    and reproduces the uninterrupted run bit for bit; the saved config names no "ulysses" attention."""
    ref_dir, single_dir, kill_dir = tmp_path / "ulysses", tmp_path / "single", tmp_path / "kill"
    jobs = [Job(trainer_cmd("ulysses", ref_dir, data_cache, attention), job_env(), tmp_path / "ulysses.log"),
            Job(trainer_cmd("single", single_dir, data_cache, attention), job_env(), tmp_path / "single.log")]  # fmt: skip
    for rc, out in wait_all(*jobs):
        check_ok(rc, out)
    assert f"padded to {SEQ_LEN[attention][1]}" in (tmp_path / "ulysses.log").read_text()
    ref, single = losses(ref_dir), losses(single_dir)
    assert sorted(ref) == sorted(single) == list(range(1, STEPS + 1))
    for key in (0, 1):  # loss, grad_norm
        torch.testing.assert_close(
            torch.tensor([ref[s][key] for s in ref], dtype=torch.float64),
            torch.tensor([single[s][key] for s in ref], dtype=torch.float64),
            rtol=1e-5, atol=0,
        )  # fmt: skip
    assert ref[STEPS][0] < ref[1][0]  # it learns: equal constants would prove nothing

    kill_at_step(trainer_cmd("ulysses", kill_dir, data_cache, attention), kill_dir, 12, tmp_path / "kill.log")
    saved = sorted(int(p.name.split("_")[1]) for p in (kill_dir / "checkpoints").glob("step_????????"))
    assert saved and saved[-1] < STEPS, saved  # killed mid-run
    rc, out = wait_all(
        Job(trainer_cmd("ulysses", kill_dir, data_cache, attention), job_env(), tmp_path / "resume.log")
    )[0]
    check_ok(rc, out)
    assert f"step_{saved[-1]:08d} at step {saved[-1]}" in out, out[-6000:]
    assert losses(kill_dir) == ref  # bit-identical floats, every step
    config = (kill_dir / "checkpoints" / f"step_{STEPS:08d}" / "model" / "config.json").read_text()
    assert "ulysses" not in config  # the saved model loads with its own attention, without the rung


def test_data_parallel_times_ulysses_matches_grad_accum(tmp_path, data_cache):
    """dp=2 x sp=2 (4 processes: two SP groups reading different rows) == one process with grad_accum=2
    (the same two rows per step): the same loss and gradient norm at every step (1e-5), SSA."""
    steps = ["train.steps=4", "train.ckpt_every=0"]
    jobs = [
        Job(trainer_cmd("ulysses", tmp_path / "dpsp", data_cache, "ssa", *steps, nproc=4), job_env(), tmp_path / "dpsp.log"),
        Job(trainer_cmd("single", tmp_path / "single", data_cache, "ssa", *steps, "train.grad_accum=2"), job_env(),
            tmp_path / "single.log"),
    ]  # fmt: skip
    for rc, out in wait_all(*jobs):
        check_ok(rc, out)
    dpsp, single = losses(tmp_path / "dpsp"), losses(tmp_path / "single")
    assert sorted(dpsp) == sorted(single) == [1, 2, 3, 4]
    for key in (0, 1):
        a = torch.tensor([dpsp[s][key] for s in dpsp], dtype=torch.float64)
        b = torch.tensor([single[s][key] for s in dpsp], dtype=torch.float64)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=0)
    assert dpsp[4][0] < dpsp[1][0]


if __name__ == "__main__":
    _worker(int(sys.argv[1]))
