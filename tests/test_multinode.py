"""Sequence parallelism across nodes, on two "nodes" of two CPU processes each on localhost (scripts/launch.sh,
torchrun's c10d rendezvous, gloo): ``parallel=multinode`` (one Ulysses group of all 4 ranks, spanning both
nodes) and ring's hybrid (Ulysses inside each node x ring across the two) equal the single-process run step
by step (1e-5), and a multinode run SIGKILLed on both nodes resumes to the same steps bit for bit. SP groups larger than a
node are refused by every rung but multinode, naming the fix.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from parallel.dims import ParallelDims, ParallelError
from parallel.multinode import apply_multinode
from parallel.ring import apply_ring
from parallel.ulysses import shard_sequences
from tests.test_distributed import TIMEOUT_S, Job, check_ok, job_env, two_node_jobs, wait_all
from tests.test_train import _wait_for_step, losses, same_steps
from tests.test_ulysses import TRAINER_ATTENTION

STEPS = 20  # checkpoints every 10; the kill lands after step 12
SEQ_LEN = 112  # 7 SSA blocks of 16; padded to 128 (a multiple of sp 4 x block 16, and of 2 x cp 2 x sp 2 x 16)


def train_args(run_dir: Path, data_cache: Path, *extra: str) -> list[str]:
    return ["experiment=smoke", "parallel.device=cpu", f"train.steps={STEPS}", "train.ckpt_every=10",
            f"train.seq_len={SEQ_LEN}", "logging.wandb=disabled", f"data.cache_dir={data_cache}",
            f"hydra.run.dir={run_dir}", *TRAINER_ATTENTION["ssa"], *extra]  # fmt: skip


def single_job(run_dir: Path, data_cache: Path, log: Path) -> Job:
    return Job([sys.executable, "-m", "train", "parallel=single", *train_args(run_dir, data_cache)], job_env(), log)


def test_multinode_matches_single_and_resumes_after_a_kill_on_both_nodes(tmp_path, data_cache):
    """parallel=multinode (parallel.sp: 0, all 4 ranks of 2 nodes) equals parallel=single; a run SIGKILLed on
    both nodes after step 12 resumes from its last checkpoint and reproduces the uninterrupted run bit for bit."""
    ref_dir, single_dir, kill_dir = tmp_path / "multinode", tmp_path / "single", tmp_path / "kill"
    multinode = ["parallel=multinode", *train_args(ref_dir, data_cache)]
    jobs = [
        *two_node_jobs(multinode, tmp_path / "multinode", 2),
        single_job(single_dir, data_cache, tmp_path / "single.log"),
    ]
    for rc, out in wait_all(*jobs):
        check_ok(rc, out)
    logs = "".join(j.output() for j in jobs[:2])
    assert "multinode: parallel.sp=4 over 2 nodes of 2 processes (dp=1)" in logs, logs[-6000:]
    assert "multinode: sequences of 112 tokens padded to 128" in logs, logs[-6000:]
    ref = losses(ref_dir)
    same_steps(ref, losses(single_dir), STEPS)

    kill = two_node_jobs(["parallel=multinode", *train_args(kill_dir, data_cache)], tmp_path / "kill", 2)
    try:
        _wait_for_step(kill_dir, 12, kill[0].proc, TIMEOUT_S)
    finally:
        for job in kill:
            job.kill()
    saved = sorted(int(p.name.split("_")[1]) for p in (kill_dir / "checkpoints").glob("step_????????"))
    assert saved and saved[-1] < STEPS, saved  # killed mid-run
    results = wait_all(
        *two_node_jobs(["parallel=multinode", *train_args(kill_dir, data_cache)], tmp_path / "resume", 2)
    )
    for rc, out in results:
        check_ok(rc, out)
    assert f"step_{saved[-1]:08d} at step {saved[-1]}" in "".join(out for _, out in results)
    # Bit for bit. With DDP's own bucket all-reduce it was not: the resumed run's first step summed gradients in
    # the first-iteration bucket layout, the uninterrupted run in the rebuilt one, and with 4 ranks the sum's
    # order changed the last bits (parallel/ddp.py: allreduce_per_parameter).
    same_steps(losses(kill_dir), ref, STEPS, rtol=0)


def test_ring_across_two_nodes_with_ulysses_inside_each_matches_single(tmp_path, data_cache):
    """parallel=ring parallel.sp=2 parallel.cp=2 on 2 nodes of 2: each SP group is one node's two ranks, each
    ring pairs a rank of node 0 with one of node 1; equal to parallel=single step by step."""
    ring = ["parallel=ring", "parallel.sp=2", "parallel.cp=2", *train_args(tmp_path / "ring", data_cache)]
    jobs = [*two_node_jobs(ring, tmp_path / "ring", 2), single_job(tmp_path / "single", data_cache, tmp_path / "s.log")]
    for rc, out in wait_all(*jobs):
        check_ok(rc, out)
    assert "ring: parallel.cp=2 x parallel.sp=2" in "".join(j.output() for j in jobs[:2])
    same_steps(losses(tmp_path / "ring"), losses(tmp_path / "single"), STEPS)


def _dims(world: int, local_world: int, sp: int, cp: int = 1) -> ParallelDims:
    return ParallelDims(world, 0, 0, world // (sp * cp), world // local_world, torch.device("cpu"), sp, None, cp,
                        None, local_world)  # fmt: skip


def test_sp_beyond_a_node_is_refused_except_by_multinode():
    """ulysses, offload and ring's Ulysses keep the SP group on one node and say to use multinode or ring;
    multinode refuses an SP group that would split a node."""
    too_big = _dims(world=4, local_world=2, sp=4)
    for rung in ("ulysses", "offload"):
        with pytest.raises(ParallelError, match=rf"parallel.sp=4 is more than the 2 processes of a node: under "
                                                 rf"parallel={rung}.*parallel=multinode"):  # fmt: skip
            shard_sequences(None, too_big, rung)
    with pytest.raises(ParallelError, match="under parallel=ring"):
        apply_ring(_tiny_loss_model(), _dims(world=8, local_world=2, sp=4, cp=2))
    with pytest.raises(ParallelError, match=r"parallel.sp=3 splits a node of 2 processes.*parallel.sp in \[2, 6\]"):
        apply_multinode(None, _dims(world=6, local_world=2, sp=3))


def _tiny_loss_model():
    from tests.test_ulysses import tiny_model

    return tiny_model("dense")
