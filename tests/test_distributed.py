"""Distributed training on CPU with gloo, in subprocesses: data parallelism matches accumulation,
a two-"node" run on localhost through scripts/launch.sh saves and resumes, and a wrong rung is
refused with a message that names the fix.

Every job is the smoke experiment (a tiny model, a few steps) on the stdlib corpus, built once per
session into a shared cache directory. Ports are chosen at run time (torchrun --standalone, or a
free port for the multi-node rendezvous); each subprocess has a timeout and is killed with its
whole process group when it runs past it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
LAUNCH = REPO_ROOT / "scripts" / "launch.sh"
TIMEOUT_S = 150  # one job; a smoke job takes about 20 s on a 2-core machine
STEPS = 4
# Variables a surrounding torchrun (or the caller's shell) may have set: each job sets its own.
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "MASTER_ADDR")
LAUNCH_VARS += ("MASTER_PORT", "NNODES", "NODE_RANK", "NPROC_PER_NODE", "RDZV_ENDPOINT", "RUN_ID")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and not k.startswith("TORCHELASTIC_")}
    # One thread per process (2 processes share 2 cores); no GPU even where there is one; the
    # launcher's torchrun is this interpreter's.
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", HYDRA_FULL_ERROR="1")
    # A rank that crashes (SIGABRT / SIGSEGV) prints every thread's Python stack: a flaky SIGABRT of one rank of
    # test_offload's world-2 case ("terminate called without an active exception", 2 of 4 full clean-clone runs on
    # 2026-12-04, never alone) left nothing else to read. 2026-12-05: it also aborts with DeepSpeed's shared-memory
    # allreduce op not loaded (tried, reverted), a few seconds after start, the main thread in C++ with no Python frame.
    # Not reproduced outside the full suite: 60 lone runs under 3x concurrency and 4 runs of the four torchrun-heavy
    # files under xdist -n 2 all passed (seventeenth session). Seen again 2026-12-05 (twenty-fifth session, clean-clone
    # CI): run_workers now runs a job aborted that way once more (THIRD_PARTY_ABORT).
    env.update(PYTHONFAULTHANDLER="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def overrides(run_dir: Path, data_cache: Path, *extra: str) -> list[str]:
    return [
        "experiment=smoke",
        f"train.steps={STEPS}",
        "train.seq_len=64",
        "logging.wandb=disabled",
        "parallel.device=cpu",
        f"data.cache_dir={data_cache}",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid``, from /proc."""
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        parent[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier]
        found += kids
        frontier = kids
    return found


class Job:
    """A subprocess in its own process group, its stdout and stderr in one log file."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path):
        self.cmd, self.log = cmd, log
        with open(log, "w") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def kill(self) -> None:
        """SIGKILL the job: its process group and every descendant (torchrun's workers leave the group)."""
        if self.proc.poll() is None:
            workers = descendants(self.proc.pid)  # before the parent dies and they are re-parented
            with contextlib.suppress(ProcessLookupError):  # it may end meanwhile
                os.killpg(self.proc.pid, signal.SIGKILL)
            for pid in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.proc.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def wait_all(*jobs: Job, timeout: float = TIMEOUT_S) -> list[tuple[int, str]]:
    """(exit code, output) of each job; all of them are killed if one runs past ``timeout``."""
    deadline = time.monotonic() + timeout
    try:
        for job in jobs:
            job.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        for job in jobs:
            job.kill()
        logs = "\n".join(f"$ {' '.join(j.cmd)}\n{j.output()[-4000:]}" for j in jobs)
        pytest.fail(f"timed out after {timeout} s:\n{logs}")
    finally:
        for job in jobs:
            job.kill()
    return [(job.proc.returncode, job.output()) for job in jobs]


def run(cmd: list[str], env: dict[str, str], log: Path) -> tuple[int, str]:
    return wait_all(Job(cmd, env, log))[0]


def check_ok(rc: int, out: str) -> None:
    assert rc == 0, f"exit code {rc}:\n{out[-6000:]}"


def torchrun(nproc: int) -> list[str]:
    """The launcher prefix of an ``nproc``-process job on this machine."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]


# The one failure run_workers retries: a rank aborted by C++ std::terminate with no exception and no Python frame, a
# few seconds after start (test_offload's world-2 case, once more in the twenty-fifth session's clean-clone CI; see
# job_env). No assertion of ours can fail that way, so a second run decides; any other failure fails at once.
THIRD_PARTY_ABORT = "terminate called without an active exception"


def run_workers(script: str | Path, nproc: int, *args: str) -> None:
    """Run a test file's ``__main__`` worker under torchrun (``nproc`` ranks, ``args`` after the path) and
    require every rank to exit 0 (once more after a :data:`THIRD_PARTY_ABORT`, with a warning)."""
    for attempt in range(2):
        out = subprocess.run(
            [*torchrun(nproc), str(script), *args],
            cwd=REPO_ROOT, env=job_env(PYTHONPATH=str(REPO_ROOT)), capture_output=True, text=True, timeout=TIMEOUT_S,
        )  # fmt: skip
        text = out.stdout + out.stderr
        before_abort = text.split(THIRD_PARTY_ABORT)[0]
        if out.returncode == 0 or attempt == 1 or before_abort == text or "Traceback" in before_abort:
            break  # passed, retried already, or a failure other than the abort (a Python error came first)
        warnings.warn(
            f"{Path(script).name}: a rank aborted ({THIRD_PARTY_ABORT}); again:\n{text[-2000:]}", stacklevel=2
        )
    check_ok(out.returncode, text)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def column(metrics: list[dict], key: str) -> torch.Tensor:
    return torch.tensor([m[key] for m in metrics], dtype=torch.float64)


def two_node_jobs(train_args: list[str], log_prefix: Path, nproc_per_node: int = 1) -> list[Job]:
    """Two launch.sh invocations on localhost (``python -m train train_args``), started as the two nodes
    of one job with ``nproc_per_node`` processes each; their logs are ``<log_prefix>-node<i>.log``."""
    endpoint, run_id = f"127.0.0.1:{free_port()}", f"test-{uuid.uuid4().hex[:8]}"
    return [
        Job(
            ["bash", str(LAUNCH), *train_args],
            job_env(
                NNODES="2", NODE_RANK=str(i), NPROC_PER_NODE=str(nproc_per_node), RDZV_ENDPOINT=endpoint, RUN_ID=run_id
            ),
            log_prefix.with_name(f"{log_prefix.name}-node{i}.log"),
        )  # fmt: skip
        for i in range(2)
    ]


def launch_two_nodes(run_dir: Path, data_cache: Path, tmp_path: Path, tag: str, *extra: str) -> list[tuple[int, str]]:
    """Two launch.sh "nodes" on localhost with one process each, data parallel."""
    return wait_all(*two_node_jobs(["parallel=ddp", *overrides(run_dir, data_cache, *extra)], tmp_path / tag))


def test_ddp_matches_grad_accum(tmp_path, data_cache):
    """2 ranks x 1 micro-batch == 1 rank x 2 micro-batches: the same rows, the same loss
    normalisation, so the same losses and gradient norms step by step."""
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    ddp = Job(
        [*torchrun(2), "-m", "train", "parallel=ddp", "train.grad_accum=1", *overrides(ddp_dir, data_cache)],
        job_env(),
        tmp_path / "ddp.log",
    )
    single = Job(
        [sys.executable, "-m", "train", "parallel=single", "train.grad_accum=2", *overrides(single_dir, data_cache)],
        job_env(),
        tmp_path / "single.log",
    )
    for rc, out in wait_all(ddp, single):
        check_ok(rc, out)

    ddp_m, single_m = read_metrics(ddp_dir), read_metrics(single_dir)
    assert [m["step"] for m in ddp_m] == [m["step"] for m in single_m] == list(range(1, STEPS + 1))
    for key in ("loss", "grad_norm"):
        torch.testing.assert_close(
            column(ddp_m, key), column(single_m, key), rtol=1e-5, atol=0, msg=lambda m, k=key: f"{k}: {m}"
        )
    losses = column(ddp_m, "loss")
    # The model learns, so a comparison of constant losses would prove nothing.
    assert losses.max() - losses.min() > 1e-2, f"losses barely change: {losses.tolist()}"
    assert losses[-1] < losses[0]


def test_two_nodes_save_and_resume(tmp_path, data_cache):
    """Two launch.sh "nodes" on localhost share one run directory: rank 0 writes every step and a
    whole checkpoint with both data streams; the same launch with more steps resumes from it."""
    run_dir = tmp_path / "run"
    for rc, out in launch_two_nodes(run_dir, data_cache, tmp_path, "first"):
        check_ok(rc, out)

    assert [m["step"] for m in read_metrics(run_dir)] == list(range(1, STEPS + 1))
    final = run_dir / "checkpoints" / f"step_{STEPS:08d}"
    assert (final / "model").is_dir() and list((final / "model").glob("*.safetensors"))
    for name in ("optimizer.pt", "data.json", "rng.pt", "meta.json"):
        assert (final / name).is_file(), name
    streams = json.loads((final / "data.json").read_text())
    assert sorted(streams) == ["0", "1"]  # global rows = 2 ranks x 1 micro-batch
    assert all(s["offset"] > 0 or s["doc"] > 0 for s in streams.values()), streams
    assert len(torch.load(final / "rng.pt", weights_only=False)) == 2  # one RNG state per rank
    assert json.loads((final / "meta.json").read_text())["dp"] == 2

    more = STEPS + 2
    results = launch_two_nodes(run_dir, data_cache, tmp_path, "resume", f"train.steps={more}")
    for rc, out in results:
        check_ok(rc, out)
    logs = "".join(out for _, out in results)
    assert f"resumed from {final} at step {STEPS}" in logs, logs[-6000:]
    # Continued after the saved step: each step logged once, none repeated from 1.
    assert [m["step"] for m in read_metrics(run_dir)] == list(range(1, more + 1))
    assert (run_dir / "checkpoints" / f"step_{more:08d}" / "data.json").is_file()


def test_single_rung_refuses_two_processes(tmp_path, data_cache):
    """parallel=single under 2 processes fails and says to use parallel=ddp (launch.sh on one
    node, with torchrun --standalone picking the port)."""
    cmd = ["bash", str(LAUNCH), "parallel=single", *overrides(tmp_path / "run", data_cache)]
    rc, out = run(cmd, job_env(NPROC_PER_NODE="2"), tmp_path / "single.log")
    assert rc != 0, out[-4000:]
    assert "parallel=single: use parallel=ddp" in out, out[-4000:]
    assert not (tmp_path / "run" / "metrics.jsonl").exists() or not read_metrics(tmp_path / "run")


def test_launch_help():
    """-h prints the usage, with the multi-node recipe, and launches nothing."""
    out = subprocess.run(["bash", str(LAUNCH), "--help"], capture_output=True, text=True, timeout=30, check=True)
    assert "Usage:" in out.stdout
    assert "NNODES=2 NODE_RANK=<i> RDZV_ENDPOINT=node0:29500 scripts/launch.sh parallel=ddp" in out.stdout
    for var in ("NNODES", "NODE_RANK", "NPROC_PER_NODE", "RDZV_ENDPOINT", "RUN_ID"):
        assert var in out.stdout


ABORTING_WORKER = """
import os, sys
from pathlib import Path
runs = Path(sys.argv[1])
runs.write_text(runs.read_text() + "x" if runs.exists() else "x")  # one x a run
if sys.argv[2] == "error":
    raise AssertionError("a real failure")
if len(runs.read_text()) == 1:  # first run: the third-party abort
    sys.stderr.write("terminate called without an active exception\\n")
    sys.stderr.flush()
    os.abort()
"""


def test_run_workers_retries_only_the_third_party_abort(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(ABORTING_WORKER)
    with pytest.warns(UserWarning, match="a rank aborted"):
        run_workers(script, 1, str(tmp_path / "abort-runs"), "abort")  # aborts, then passes
    assert (tmp_path / "abort-runs").read_text() == "xx"
    with pytest.raises(AssertionError, match="a real failure"):
        run_workers(script, 1, str(tmp_path / "error-runs"), "error")  # a Python error: no second run
    assert (tmp_path / "error-runs").read_text() == "x"
