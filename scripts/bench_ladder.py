"""The memory-ladder benchmark (issue 7): the largest context at which a model completes full training steps
(forward + backward + optimizer) per rung, and step time against dense attention on the same rung.

Each attempt is a real ``python -m train`` run (``torchrun`` when the rung uses several GPUs) of a random-init
model on the embedded corpus, one sequence per step, activation checkpointing on, no checkpoint written
(``train.save_final=false``). ``step_s`` is the median of the steps after the first, ``peak_gpu_gib`` the
trainer's ``torch.cuda.max_memory_allocated`` (largest over ranks and steps), ``peak_host_gib`` the node's host
memory: the largest over the run of the summed proportional set size (PSS: shared pages split between their
sharers) of the launcher and all its descendants, sampled every 0.2 s, or the largest single process's resident
set (``os.wait4``'s rusage, exact) where that is larger (one process). Beside each attempt the planner's estimate (``parallel/plan.py``) is recorded, so its error can be
read off every measured peak. An attempt that fails (out of memory, timeout) is recorded with ``ok: false``
and the tail of its log; with ``--search`` the first failure ends that (attention, rung) pair.

    python3 scripts/bench_ladder.py --model llama_1b --rungs single nested --attention ssa --seq-lens 256K 512K 1M --search
    python3 scripts/bench_ladder.py --model llama_8b --rungs offload --attention ssa dense --seq-lens 256K 512K

Writes ``<out>/ladder-<gpu>.json`` ({"device", "date", "command", "results": [{"model", "attention", "rung",
"gpus", "seq_len", "ok", "step_s", "peak_gpu_gib", "peak_host_gib", ...}]}), merged with the rows already
there (same model, attention, rung, gpus, seq_len and --extra: replaced), after every attempt, and prints a table.
``--dry-run`` prints the commands and the planner's estimates without running anything (a CPU check).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the planner (parallel.plan) when run as a script
KI, MI = 1024, 1024 * 1024
GIB = 2**30

# Rung recipes: (processes, overrides, planner setup keys). "nested" is the nested-offload pieces that run
# without DeepSpeed (tiled MLP + checkpointed layer inputs on the host); the DeepSpeed rungs are named as the
# parallel configs they use.
TILE = 16384
RUNGS: dict[str, tuple[int, list[str]]] = {
    "single": (1, ["parallel=single"]),
    "tiled": (1, ["parallel=single", f"parallel.tiled_mlp={TILE}"]),
    "offact": (1, ["parallel=single", "parallel.offload_activations=true"]),
    "nested": (1, ["parallel=single", f"parallel.tiled_mlp={TILE}", "parallel.offload_activations=true"]),
    "ulysses2": (2, ["parallel=ulysses", "parallel.sp=2"]),
    "ulysses2_nested": (
        2,
        ["parallel=ulysses", "parallel.sp=2", f"parallel.tiled_mlp={TILE}", "parallel.offload_activations=true"],
    ),
    "offload": (1, ["parallel=offload"]),
    "nested_offload": (1, ["parallel=nested_offload"]),
}
COMPOSED = (
    "ulysses<N>[_nested], offload_sp<N>, nested_offload_sp<N> (Ulysses inside ZeRO-3), offload_dp<N>, "
    "nested_offload_dp<N> (ZeRO-3 over N data-parallel ranks), ring<SP>x<CP>; any name + _layer"
)


def recipe(rung: str) -> tuple[int, list[str]]:
    """(processes, overrides) of a rung recipe: a key of RUNGS or a composed name (COMPOSED): Ulysses over N GPUs
    (with the nested pieces), ZeRO-3 offload with Ulysses inside, the ring of SP x CP GPUs; "_layer" adds the tiled
    layer (parallel.tiled_layer, parallel/tiled_layer.py), e.g. nested_layer, nested_offload_sp8_layer."""
    import re

    layer = rung.endswith("_layer")
    base = rung.removesuffix("_layer")
    nested = [f"parallel.tiled_mlp={TILE}", "parallel.offload_activations=true"]
    if base in RUNGS:
        nproc, ovr = RUNGS[base]
    elif m := re.fullmatch(r"ulysses(\d+)(_nested)?", base):
        nproc, ovr = int(m[1]), ["parallel=ulysses", f"parallel.sp={m[1]}", *(nested if m[2] else [])]
    elif m := re.fullmatch(r"(nested_offload|offload)_(sp|dp)(\d+)", base):
        nproc, ovr = int(m[3]), [f"parallel={m[1]}", *([f"parallel.sp={m[3]}"] if m[2] == "sp" else [])]
    elif m := re.fullmatch(r"ring(\d+)x(\d+)", base):
        nproc, ovr = int(m[1]) * int(m[2]), ["parallel=ring", f"parallel.sp={m[1]}", f"parallel.cp={m[2]}"]
    else:
        raise argparse.ArgumentTypeError(f"rung {rung!r}: use one of {sorted(RUNGS)} or {COMPOSED}")
    return nproc, [*ovr, *([f"parallel.tiled_layer={TILE}"] if layer else [])]


def rung_name(text: str) -> str:
    recipe(text)  # argparse: an unknown name stops before anything runs
    return text


def size(text: str) -> int:
    """'256K', '1M', '131072' -> tokens."""
    text = text.strip().upper()
    mult = {"K": KI, "M": MI}.get(text[-1:], 1)
    return int(float(text[:-1] if mult > 1 else text) * mult)


def overrides_for(model: str, attention: str, rung: str, seq_len: int, steps: int, extra: tuple = ()) -> list[str]:
    return [
        f"model={model}",
        f"attention={attention}",
        *recipe(rung)[1],
        f"train.seq_len={seq_len}",
        f"model.hf_config.max_position_embeddings={max(seq_len, 8192)}",
        f"train.steps={steps}",
        "train.micro_batch=1",
        "train.grad_accum=1",
        "train.activation_checkpointing=true",
        "train.ckpt_every=0",
        "train.save_final=false",
        "train.schedule.warmup_steps=1",
        "logging.log_every=1",
        "logging.progress=false",
        "logging.router_stats_every=0",
        "logging.wandb=disabled",  # the device image has no wandb; nothing to track here
        "parallel.memory_check=warn",  # it finds the limits by trying: no refusal from the planner's estimate
        "name=ladder",
        *extra,  # --extra: the user's own overrides last, so they win
    ]


def command(nproc: int, overrides: list[str], run_dir: Path) -> list[str]:
    launcher = [sys.executable, "-m", "train"]
    if nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                    "-m", "train"]  # fmt: skip
    return [*launcher, f"hydra.run.dir={run_dir}", *overrides]


def shown_command(nproc: int, overrides: list[str]) -> str:
    """The attempt's command as a person would type it (``command`` runs it through this interpreter)."""
    return " ".join(["python -m train" if nproc == 1 else f"torchrun --nproc-per-node={nproc} -m train", *overrides])


def planned(model: str, attention: str, rung: str, seq_len: int, extra: tuple = ()) -> dict:
    """The planner's GPU and host estimate (GiB) for this attempt (the rung's recipe, then ``extra``: the
    ``--extra`` overrides the planner reads), or {} where it has no estimate."""
    from parallel.plan import Setup, estimate, load_shape

    nproc, ovr = recipe(rung)
    kv = dict(o.split("=", 1) for o in [*ovr, *extra])
    name = kv["parallel"]
    sp, cp = int(kv.get("parallel.sp", 1)), int(kv.get("parallel.cp", 1))
    fp32 = kv.get("train.precision") == "fp32" or kv.get("parallel.offload.build_dtype") == "fp32"
    setup = Setup(
        attention,
        True,
        int(kv.get("parallel.tiled_mlp", 0)),
        kv.get("parallel.offload_activations") == "true",
        tiled_layer=int(kv.get("parallel.tiled_layer", 0)),
        bf16_build=not fp32,
    )
    shape = load_shape(REPO / "conf" / "model" / f"{model}.yaml", attention)
    e = estimate(shape, seq_len, name, nproc, sp, setup, cp)
    if e.note:
        return {"plan_note": e.note}
    return {"planned_gpu_gib": round(e.gpu_bytes / GIB, 2), "planned_host_gib": round(e.host_bytes / GIB, 2)}


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL it when this script dies. The child runs in its own session (so a
    timeout can kill its whole group), which a kill of this script (a device call's time limit) does not
    reach; without this, a killed benchmark left a run holding 74 GiB of the GPU for the next attempt."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def attempt(model: str, attention: str, rung: str, seq_len: int, steps: int, timeout_s: float, work: Path,
            extra: tuple = ()) -> dict:  # fmt: skip
    nproc, _ = recipe(rung)
    ovr = overrides_for(model, attention, rung, seq_len, steps, extra)
    run_dir = work / f"{model}-{attention}-{rung}-{seq_len}"
    cmd = command(nproc, ovr, run_dir)
    row = {"model": model, "attention": attention, "rung": rung, "gpus": nproc, "seq_len": seq_len,
           "command": shown_command(nproc, ovr)}  # fmt: skip
    if extra:
        row["extra"] = list(extra)
    row.update(planned(model, attention, rung, seq_len, extra))
    log = work / f"{run_dir.name}.log"
    t0 = time.time()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=_die_with_parent)  # fmt: skip
        deadline = t0 + timeout_s
        status, rusage, timed_out, node_peak = None, None, False, 0
        while status is None:
            pid, st, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                status, rusage = st, ru
            elif time.time() > deadline:
                os.killpg(proc.pid, 9)  # the launcher and its workers (one session)
                _, status, rusage = os.wait4(proc.pid, 0)
                timed_out = True
            else:
                node_peak = max(node_peak, tree_pss_bytes(proc.pid))
                time.sleep(0.2)
        proc.returncode = os.waitstatus_to_exitcode(status)
    row["wall_s"] = round(time.time() - t0, 1)
    largest_process = rusage.ru_maxrss * 1024  # ru_maxrss is in KiB on Linux
    row["peak_host_gib"] = round(max(node_peak, largest_process) / GIB, 2)
    row["peak_host_sampled_gib"] = round(node_peak / GIB, 2)  # the processes' summed PSS, sampled
    metrics = run_dir / "metrics.jsonl"
    steps_done = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.exists() else []
    row["steps_done"] = len(steps_done)
    row["ok"] = proc.returncode == 0 and len(steps_done) >= steps and not timed_out
    if steps_done:
        steady = steps_done[1:] or steps_done
        row["first_step_s"] = round(steps_done[0]["step_s"], 3)  # with warm-up: Triton compiles, allocator growth
        if len(steps_done) == 1:
            row["step_s_is_first_step"] = True  # no steady step to take: step_s includes the warm-up
        row["step_s"] = round(statistics.median(r["step_s"] for r in steady), 3)
        row["tokens_per_s"] = round(seq_len / row["step_s"], 1)
        if any("peak_mem_gib" in r for r in steps_done):
            row["peak_gpu_gib"] = round(max(r.get("peak_mem_gib", 0.0) for r in steps_done), 2)
        row["losses"] = [round(r["loss"], 4) for r in steps_done]
    if not row["ok"]:
        text = log.read_text(errors="replace")
        row["error"] = "timeout" if timed_out else _error_line(text)
        row["log_tail"] = text[-3000:]
    return row


def tree_pss_bytes(root: int) -> int:
    """The summed proportional set size of process ``root`` and all its descendants (0 where /proc cannot tell):
    a node's host memory, each shared page (the libraries every rank maps) counted once over its sharers, where a
    sum of resident sets would count it once per rank. No psutil: /proc is enough."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
        except (OSError, IndexError):
            continue  # exited while listed
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024  # kB
                    break
        except OSError:
            continue
    return total


def _error_line(text: str) -> str:
    for key in ("OutOfMemoryError", "out of memory", "CUDA error", "Error", "error"):
        hits = [ln for ln in text.splitlines() if key in ln]
        if hits:
            return hits[-1][:400]
    return text.strip().splitlines()[-1][:400] if text.strip() else "no output"


def save(path: Path, device: str, argv: list[str], rows: list[dict]) -> None:
    old = json.loads(path.read_text())["results"] if path.exists() else []
    key = lambda r: (r["model"], r["attention"], r["rung"], r["gpus"], r["seq_len"], *r.get("extra", []))  # noqa: E731
    new = {key(r) for r in rows}
    doc = {
        "device": device,
        "date": datetime.date.today().isoformat(),
        "command": "python3 scripts/bench_ladder.py " + shlex.join(argv),
        "results": [r for r in old if key(r) not in new] + rows,
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)


def table(rows: list[dict]) -> str:
    head = f"{'model':10} {'attn':5} {'rung':20} {'gpus':>4} {'seq_len':>9} {'ok':>3} {'step s':>8} {'GPU GiB':>8} {'plan':>7} {'host GiB':>8}  error"  # noqa: E501
    lines = [head]
    for r in rows:
        step = f"{r['step_s']:.2f}" if r.get("step_s") is not None else "-"
        gpu = f"{r['peak_gpu_gib']:.1f}" if r.get("peak_gpu_gib") is not None else "-"
        plan = f"{r['planned_gpu_gib']:.1f}" if r.get("planned_gpu_gib") is not None else "-"
        host = f"{r['peak_host_gib']:.1f}" if r.get("peak_host_gib") is not None else "-"
        lines.append(f"{r['model']:10} {r['attention']:5} {r['rung']:20} {r['gpus']:>4} {r['seq_len']:>9} "
                     f"{'yes' if r.get('ok') else 'no':>3} {step:>8} {gpu:>8} {plan:>7} {host:>8}  "
                     f"{(r.get('error') or '')[:80]}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="llama_8b", help="a conf/model/<name>.yaml")
    ap.add_argument("--attention", nargs="+", default=["ssa"], choices=("ssa", "dense"))
    ap.add_argument("--rungs", nargs="+", default=["nested"], type=rung_name,
                    help=f"{', '.join(sorted(RUNGS))}, or {COMPOSED}")  # fmt: skip
    ap.add_argument("--seq-lens", type=size, nargs="+", default=[256 * KI, 512 * KI, MI])
    ap.add_argument("--search", action="store_true", help="stop a (attention, rung) pair at its first failure")
    ap.add_argument("--steps", type=int, default=3, help="training steps per attempt (the first is left out)")
    ap.add_argument("--timeout-s", type=float, default=420.0, help="per attempt")
    ap.add_argument("--budget-s", type=float, default=1e9, help="start no attempt after this many seconds")
    ap.add_argument("--out", default=str(REPO / "docs" / "results"))
    ap.add_argument("--dry-run", action="store_true", help="print commands and planner estimates only")
    ap.add_argument("--extra", nargs="*", default=[], metavar="KEY=VALUE",
                    help="more Hydra overrides for every attempt, e.g. parallel.offload.optimizer=torch")  # fmt: skip
    args = ap.parse_args(argv)

    if args.dry_run:
        for att in args.attention:
            for rung in args.rungs:
                for n in args.seq_lens:
                    nproc, _ = recipe(rung)
                    ovr = overrides_for(args.model, att, rung, n, args.steps, tuple(args.extra))
                    print(json.dumps({"rung": rung, "attention": att, "seq_len": n,
                                      **planned(args.model, att, rung, n, tuple(args.extra))}))  # fmt: skip
                    print("   ", shlex.join(command(nproc, ovr, Path("runs/ladder"))))
        return

    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = device.replace("NVIDIA ", "").split()[0].lower() if torch.cuda.is_available() else "cpu"  # h100, h200
    path = out / f"ladder-{tag}.json"
    t_start = time.time()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for att in args.attention:
            for rung in args.rungs:
                for n in sorted(args.seq_lens):
                    if time.time() - t_start > args.budget_s:
                        print(f"budget spent: not starting {att} {rung} {n}", flush=True)
                        break
                    row = attempt(args.model, att, rung, n, args.steps, args.timeout_s, Path(tmp), tuple(args.extra))
                    row["device"] = device
                    rows.append(row)
                    save(path, device, argv, rows)
                    print(table([row]).splitlines()[1], flush=True)
                    if args.search and not row["ok"]:
                        break
    print(f"\n{device}, {len(rows)} attempts, {time.time() - t_start:.0f} s")
    print(table(rows))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
