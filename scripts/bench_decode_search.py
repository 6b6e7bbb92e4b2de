"""Time one decode step's block search under the issue-6 recipe's evaluation settings (``--recipe h200-4k-prose``:
bound node and leaf scores, beams [64,256,512], 64 routed blocks; block 64, branching 8) on the recipe's model
shape (8 q / 4 kv heads, d 64), one layer: ``DecodeState.append`` + ``DecodeState.route`` after a random prompt of
each ``--n`` tokens, the path ``train.eval`` decodes with (the graphed Triton decode takes mean scores only).

For each n and each ``--gather-total`` (``ssa_kernels.selector.reference._GATHER_TOTAL``: 0 = the old rule, 16 KiB
of candidates per query block, so a step's one query block gathers its 4,096 leaf candidates in 256 chunks; the
default lets it gather them at once) it prints the median ms per step and the top-level aten ops per step
(torch.profiler: a GPU step is launch-bound when these are many), and writes ``--out`` (JSON).

    python scripts/bench_decode_search.py --n 262144 1048576 --out docs/results/decode-search-cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script without an install (the device image)

import ssa_kernels.selector.reference as reference  # noqa: E402
from ssa_kernels import SSAConfig  # noqa: E402
from ssa_kernels.decode.reference import DecodeState  # noqa: E402

RECIPE = dict(block_size=64, branching=8, local_window=256, topk_blocks=64, top_nodes=64, sink_blocks=1,
              beam_widths=[64, 256, 512], node_score="bound", leaf_score="bound")  # fmt: skip


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(n: int, gather_total: int, steps: int, device: torch.device, dtype: torch.dtype) -> dict:
    """One layer's decode search after an n-token prompt: median ms per step and aten ops per step."""
    cfg = SSAConfig(**RECIPE)
    gen = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(1, 8, n, 64, device=device, dtype=dtype, generator=gen)
    k = torch.randn(1, 4, n, 64, device=device, dtype=dtype, generator=gen)
    new = [(torch.randn(1, 8, 64, device=device, dtype=dtype, generator=gen),
            torch.randn(1, 4, 64, device=device, dtype=dtype, generator=gen)) for _ in range(2 * steps)]  # fmt: skip
    old_total = reference._GATHER_TOTAL
    reference._GATHER_TOTAL = gather_total
    try:
        state = DecodeState.from_prefill(q, k, cfg)
        state.route(cfg)  # builds the min / max tables (once per prompt)
        times = []
        for qn, kn in new[:steps]:
            sync(device)
            t0 = time.perf_counter()
            state.append(qn, kn, cfg)
            routed = state.route(cfg)
            sync(device)
            times.append((time.perf_counter() - t0) * 1e3)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for qn, kn in new[steps : 2 * steps]:
                state.append(qn, kn, cfg)
                state.route(cfg)
            sync(device)
    finally:
        reference._GATHER_TOTAL = old_total
    ops = [e for e in prof.events() if e.name.startswith("aten::")]
    top = [e for e in ops if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
    return {"n": n, "gather_total": gather_total, "ms_per_step": round(statistics.median(times), 3),
            "aten_ops_per_step": round(len(top) / steps),
            "routed": int((routed >= 0).sum()), "routed_index_sum": int(routed.clamp(min=0).sum())}  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[262144, 1048576])
    ap.add_argument("--gather-total", type=int, nargs="+", default=[0, reference._GATHER_TOTAL])
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None, help="JSON of the rows (and device, date, command)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = [bench(n, g, args.steps, device, dtype) for n in args.n for g in args.gather_total]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"{name}, {dtype}; one layer, 8 q / 4 kv heads, d 64, bound / bound, beams [64,256,512], 64 routed")
    print("| n | _GATHER_TOTAL | ms / step | aten ops / step | routed (index sum) |\n|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['n']:,} | {r['gather_total']:,} | {r['ms_per_step']} | {r['aten_ops_per_step']:,} | "
            f"{r['routed']} ({r['routed_index_sum']}) |"
        )
    if args.out:
        doc = {"device": name, "dtype": str(dtype), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"), "command": " ".join(["python", "scripts/bench_decode_search.py", *(argv or sys.argv[1:])]),
            "rows": rows}  # fmt: skip
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(doc, indent=1))
    return rows


if __name__ == "__main__":
    main()
