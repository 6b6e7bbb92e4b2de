"""Recipe sweep for issue 6: several short training runs side by side on one GPU, each probed after.

A small model leaves GPU capacity idle (0.1 s steps of kernel launches), so one device call trains
several candidate recipes at once. Each ``--run NAME OVERRIDES`` is ``python -m train`` with
``experiment=<--experiment>`` plus the overrides (Hydra syntax, one string), in ``<out>/<NAME>/``; every
run gets SIGTERM after ``--minutes`` (the trainer saves and stops). Then ``scripts/probe_answers.py``
probes each checkpoint at ``--probe-lengths`` (teacher-forced answer loss and exact match on EVAL-split
samples). Prints a table and writes ``<out>/sweep.json``: {"device", "date", "command", "runs":
[{"name", "overrides", "steps", "last_loss", "probe": [probe rows]}]}.

    python scripts/sweep_recipes.py --out runs/sweep --minutes 6 \
        --run a "attention=dense train.seq_len=1024 train.micro_batch=32" \
        --run b "attention=dense train.seq_len=1024 train.micro_batch=32 train.optimizer.lr=3e-3"

``--then NAME OVERRIDES`` (after the sweep) continues the run NAME from its checkpoint
(``model=hf model.path=...``, fresh optimizer) for ``--then-minutes``, e.g. at 16K with SSA.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from train.config import ConfigError  # noqa: E402
from train.eval import resolve_checkpoint  # noqa: E402


def _train_cmd(experiment: str, name: str, run_dir: Path, overrides: str) -> list[str]:
    return [sys.executable, "-m", "train", f"experiment={experiment}", f"name={name}", f"hydra.run.dir={run_dir}",
            "train.ckpt_every=0", *shlex.split(overrides)]  # fmt: skip


def _train_all(jobs: list[tuple[str, list[str], Path]], minutes: float) -> None:
    """Start every job, SIGTERM them all after ``minutes``, wait for their checkpoints."""
    procs = []
    for name, cmd, run_dir in jobs:
        run_dir.mkdir(parents=True, exist_ok=True)
        log = open(run_dir / "train.log", "w")  # noqa: SIM115 (closed below)
        procs.append((name, subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT), log))
        print(f"[{name}] {shlex.join(cmd)}", flush=True)
    deadline = time.time() + minutes * 60
    while time.time() < deadline and any(p.poll() is None for _, p, _ in procs):
        time.sleep(2)
    for _, p, _ in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for name, p, log in procs:
        try:
            p.wait(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
        log.close()
        print(f"[{name}] exit {p.returncode}", flush=True)


def _metrics(run_dir: Path) -> tuple[int, float | None]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()] \
        if (run_dir / "metrics.jsonl").exists() else []  # fmt: skip
    rows = [r for r in rows if "loss" in r]
    return (rows[-1]["step"], rows[-1]["loss"]) if rows else (0, None)


def _probe(run_dir: Path, tasks: list[str], lengths: list[int], samples: int) -> list[dict]:
    out = []
    for length in lengths:
        cmd = [sys.executable, "scripts/probe_answers.py", str(run_dir), "--tasks", *tasks, "--length", str(length),
               "--samples", str(samples)]  # fmt: skip
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
        if r.returncode != 0:
            print(f"probe of {run_dir} at {length} failed:\n{r.stderr[-2000:]}", flush=True)
        out += rows
    return out


def _latest_model(run_dir: Path) -> Path | None:
    """The model directory of the run's latest complete checkpoint (train.eval's rule), or None."""
    try:
        return resolve_checkpoint(str(run_dir))
    except ConfigError:
        return None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--experiment", default="functional_context_copy")
    p.add_argument("--minutes", type=float, required=True, help="training time of every run (wall)")
    p.add_argument("--run", nargs=2, action="append", metavar=("NAME", "OVERRIDES"), required=True)
    p.add_argument("--then", nargs=2, metavar=("NAME", "OVERRIDES"), help="continue run NAME with these overrides")
    p.add_argument("--then-minutes", type=float, default=0.0)
    p.add_argument("--probe-tasks", nargs="+", default=["niah_single_1", "niah_multikey_2", "copy"])
    p.add_argument("--probe-lengths", nargs="+", type=int, default=[1024])
    p.add_argument("--probe-samples", type=int, default=32)
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    jobs = [(n, _train_cmd(args.experiment, n, out / n, o), out / n) for n, o in args.run]
    _train_all(jobs, args.minutes)
    runs = [{"name": n, "overrides": o, "dir": out / n} for n, o in args.run]
    if args.then:
        base, overrides = args.then
        name = f"{base}_then"
        src = _latest_model(out / base)
        if src is None:
            raise SystemExit(f"--then {base}: no checkpoint under {out / base}/checkpoints (see its train.log)")
        cmd = _train_cmd(
            args.experiment, name, out / name, f"model=hf model.path={src} model.tokenizer=byte {overrides}"
        )
        _train_all([(name, cmd, out / name)], args.then_minutes)
        runs.append({"name": name, "overrides": f"from {base}: {overrides}", "dir": out / name})
    device = "cpu"
    try:
        import torch

        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception:  # noqa: BLE001 (the device name is informational)
        pass
    result = {"device": device, "date": datetime.date.today().isoformat(), "command": shlex.join(sys.argv), "runs": []}
    print(f"\n{'run':<14} {'steps':>6} {'loss':>7}  task@length: answer_loss / exact (copy: first-copy loss)")
    for r in runs:
        steps, loss = _metrics(r["dir"])
        saved = _latest_model(r["dir"]) is not None
        probe = _probe(r["dir"], args.probe_tasks, args.probe_lengths, args.probe_samples) if saved else []
        result["runs"].append({"name": r["name"], "overrides": r["overrides"], "steps": steps, "last_loss": loss,
                               "probe": probe})  # fmt: skip
        cells = [f"{q['task']}@{q['length']}: {q['answer_loss']:.2f}/{q['exact']:.2f}"
                 + (f" ({q['first_copy_loss']:.2f})" if "first_copy_loss" in q else "") for q in probe]  # fmt: skip
        print(f"{r['name']:<14} {steps:>6} {loss if loss is None else round(loss, 3)!s:>7}  " + "; ".join(cells))
        (out / "sweep.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
