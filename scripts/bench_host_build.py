"""The host memory a node's processes take to build the model under the offload rungs, with the model built in
fp32 (DeepSpeed's own assumption) or in bf16 (``parallel.offload.build_dtype=auto`` under bf16 training).

Every process of a node builds the whole model before ZeRO-3 partitions it (``parallel/offload.py``,
``build_dtype``), so on nodes of 5 or more GPUs the build is the node's host peak. This runs the real trainer
(``torchrun --nproc-per-node N -m train parallel=offload ...``, ZeRO-3 over N data-parallel ranks) once per build
dtype and samples the summed proportional set size of its processes every 0.1 s (``bench_ladder.tree_pss_bytes``)
until DeepSpeed's engine is built (the trainer's "offload: ZeRO-3 over" line), then stops the run: the build, the
cast and the partitioning, and not the steps. On CPU (``--device cpu``, gloo) DeepSpeed's device-side buffers are
host memory too, which is why the steps are left out; on a GPU node they are not.

    python3 scripts/bench_host_build.py --nproc 4 --device cpu --model llama_125m \
        --model-overrides model.hf_config.hidden_size=1024 model.hf_config.num_hidden_layers=24

Writes ``<out>/host-build-<device>.json`` ({"device", "date", "command", "results": [{"model", "model_overrides",
"params", "nproc", "build_dtype", "peak_host_gib", "planned_build_gib", "wall_s", "command"}]}), merged with the rows
there (same model, overrides, processes and build: replaced), and prints a table.
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
GIB = 2**30


def params_of(model: str, overrides: list[str], tmp: Path) -> int:
    """The model's exact parameter count with the ``model.*`` overrides (the planner's meta-device count)."""
    from omegaconf import OmegaConf

    from parallel.plan import load_shape

    spec = OmegaConf.load(REPO / "conf" / "model" / f"{model}.yaml")
    spec.merge_with_dotlist([o.removeprefix("model.") for o in overrides])
    OmegaConf.save(spec, tmp / "model.yaml")
    return load_shape(tmp / "model.yaml").params


def measure(bl, model: str, overrides: list[str], nproc: int, device: str, build: str, timeout_s: float, work: Path):
    extra = (f"parallel.device={device}", "train.precision=bf16", f"parallel.offload.build_dtype={build}", *overrides)
    ovr = bl.overrides_for(model, "dense", f"offload_dp{nproc}", 1024, 1, extra)
    run_dir = work / f"build-{build}"
    log = work / f"build-{build}.log"
    cmd = bl.command(nproc, ovr, run_dir)
    t0, peak, built = time.time(), 0, False
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        while proc.poll() is None and time.time() - t0 < timeout_s:
            peak = max(peak, bl.tree_pss_bytes(proc.pid))
            if "offload: ZeRO-3 over" in log.read_text(errors="replace"):
                built = True
                break
            time.sleep(0.1)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    if not built:
        raise SystemExit(f"the engine was not built ({build}); log {log}:\n{log.read_text()[-3000:]}")
    return peak, time.time() - t0, bl.shown_command(nproc, ovr)


def save(path: Path, device: str, command: str, rows: list[dict]) -> None:
    """Write ``rows`` into ``path``, replacing the rows of the same model, overrides, processes and build there."""
    key = lambda r: (r["model"], *r["model_overrides"], r["nproc"], r["build_dtype"])  # noqa: E731
    old = json.loads(path.read_text())["results"] if path.exists() else []
    new = {key(r) for r in rows}
    rows = [{**r, "script_command": command} for r in rows]  # which invocation measured each row
    doc = {"device": device, "date": datetime.date.today().isoformat(), "command": command,
           "results": [r for r in old if key(r) not in new] + rows}  # fmt: skip
    path.write_text(json.dumps(doc, indent=1))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="llama_125m", help="a conf/model/<name>.yaml")
    ap.add_argument("--model-overrides", nargs="*", default=[], metavar="model.KEY=VALUE")
    ap.add_argument("--nproc", type=int, default=4)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--timeout-s", type=float, default=600.0)
    ap.add_argument("--out", default=str(REPO / "docs" / "results"))
    args = ap.parse_args(argv)

    import tempfile

    import torch

    sys.path.insert(0, str(REPO / "scripts"))
    import bench_ladder as bl  # its trainer command, overrides and process-tree PSS

    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    rows = []
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:  # killed runs may still be writing
        params = params_of(args.model, args.model_overrides, Path(tmp))
        for build, nbytes in (("fp32", 4), ("auto", 2)):
            peak, wall, command = measure(bl, args.model, args.model_overrides, args.nproc, args.device, build,
                                          args.timeout_s, Path(tmp))  # fmt: skip
            rows.append({"model": args.model, "model_overrides": args.model_overrides, "params": params,
                         "nproc": args.nproc, "build_dtype": "bf16" if build == "auto" else "fp32",
                         "peak_host_gib": round(peak / GIB, 2),
                         "planned_build_gib": round(nbytes * params * args.nproc / GIB, 2),
                         "wall_s": round(wall, 1), "command": command})  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "cpu" if args.device == "cpu" else device.replace("NVIDIA ", "").split()[0].lower()
    path = out / f"host-build-{tag}.json"
    save(path, device, "python3 scripts/bench_host_build.py " + shlex.join(argv), rows)
    print(f"{'build':6} {'procs':>5} {'params':>12} {'models built GiB':>17} {'node peak GiB':>14}")
    for r in rows:
        print(f"{r['build_dtype']:6} {r['nproc']:>5} {r['params']:>12,} {r['planned_build_gib']:>17.2f} "
              f"{r['peak_host_gib']:>14.2f}")  # fmt: skip
    print(
        f"bf16 build saves {rows[0]['peak_host_gib'] - rows[1]['peak_host_gib']:.2f} GiB of the node's peak; "
        f"wrote {path}"
    )


if __name__ == "__main__":
    main()
