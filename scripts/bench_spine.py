"""Throughput of the training spine on one GPU: the default job and a 32K-token CPT run of a
~125M-parameter Llama-shaped model with dense SDPA attention (eager, torch.compile, activation
checkpointing). Each job is a real ``python -m train`` run; tokens/s, MFU and peak memory are the
medians of its steps after warm-up. Prints a table and writes docs/results/spine-<gpu>.json.

    python scripts/bench_spine.py --out docs/results
    python scripts/bench_spine.py --name train-step --skip 2 --jobs "1B seq 128K dense AC" "1B seq 128K ssa AC"
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent

JOBS = {
    "default (tiny, seq 1024)": [],
    "125M seq 32K eager": ["experiment=gpu_125m_32k"],
    "125M seq 32K compile": ["experiment=gpu_125m_32k", "train.compile=true"],
    "125M seq 32K AC": ["experiment=gpu_125m_32k", "train.activation_checkpointing=true"],
    # issue 4: a 1B-shaped model at 128K tokens, dense SDPA (FlashAttention-2 backend) against SSA
    "1B seq 128K dense AC": ["experiment=gpu_1b_128k", "attention=dense"],
    "1B seq 128K ssa AC": ["experiment=gpu_1b_128k", "attention=ssa"],
}


def run_job(name: str, overrides: list[str], work: Path, skip: int) -> dict:
    run_dir = work / name.split(" (")[0].replace(" ", "_")
    cmd = [sys.executable, "-m", "train", f"hydra.run.dir={run_dir}", "logging.progress=false", *overrides]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    (work / f"{run_dir.name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        print(proc.stderr[-4000:], file=sys.stderr)
        return {"job": name, "command": " ".join(["python -m train", *overrides]), "ok": False}
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steady = rows[skip:] or rows
    med = lambda k: statistics.median(r[k] for r in steady) if k in steady[0] else None  # noqa: E731
    return {
        "job": name,
        "command": " ".join(["python -m train", *overrides]),
        "ok": True,
        "steps": len(rows),
        "first_loss": rows[0]["loss"],
        "last_loss": rows[-1]["loss"],
        "tokens_per_s": med("tokens_per_s"),
        "step_s": med("step_s"),
        "mfu": med("mfu"),
        "peak_mem_gib": max(r.get("peak_mem_gib", 0) for r in rows),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(REPO / "docs" / "results"))
    ap.add_argument("--skip", type=int, default=5, help="warm-up steps left out of the medians")
    ap.add_argument("--jobs", nargs="*", default=[j for j in JOBS if not j.startswith("1B")])
    ap.add_argument("--name", default="spine", help="results file stem: <out>/<name>-<gpu>.json")
    args = ap.parse_args()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        results = [run_job(j, JOBS[j], Path(tmp), args.skip) for j in args.jobs]
        logs = {p.name: p.read_text()[-20000:] for p in Path(tmp).glob("*.log")}
    print(f"\n{gpu}, torch {torch.__version__}")
    print(f"{'job':28} {'ok':>3} {'tokens/s':>10} {'step s':>7} {'MFU':>6} {'peak GiB':>8} {'loss first->last':>18}")
    for r in results:
        if not r["ok"]:
            print(f"{r['job']:28} {'no':>3}")
            continue
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        print(
            f"{r['job']:28} {'yes':>3} {r['tokens_per_s']:>10.0f} {r['step_s']:>7.3f} {mfu:>6} "
            f"{r['peak_mem_gib']:>8.2f} {r['first_loss']:>8.3f}->{r['last_loss']:.3f}"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = gpu.replace("NVIDIA ", "").split()[0].lower()
    doc = {
        "device": gpu,
        "date": datetime.date.today().isoformat(),
        "command": "python scripts/bench_spine.py " + " ".join(sys.argv[1:]),
        "torch": torch.__version__,
        "results": results,
    }
    (out / f"{args.name}-{tag}.json").write_text(json.dumps(doc, indent=1))
    (out / f"{args.name}-{tag}-logs.json").write_text(json.dumps(logs))


if __name__ == "__main__":
    main()
