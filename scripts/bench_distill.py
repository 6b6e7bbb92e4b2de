"""Check and time the router-distillation target (``ssa_kernels/distill/``): the PyTorch reference (chunked,
materialised probabilities) against the Triton kernel, and one SSA layer's training forward + backward with
``routing=distill`` on each, at the issue-6 recipe's shape (llama_30m: 8 q / 4 kv heads of 64, blocks of 64, a
256-token window, far blocks, every query block distilled, 8 rows a step).

    PYTHONPATH=. python3 scripts/bench_distill.py [--lengths 4096 16384] [--batch 8] [--out docs/results/distill-h200.json]

Prints a table (ms per call, the kernel's max abs difference from the reference) and writes JSON {"device",
"date", "command", "results": [{"seq_len", "batch", "part", "backend", "ms", "max_abs_diff"}]}; parts: "target"
(the block mass alone, one layer) and "layer" (``ssa_attention`` forward + backward of one layer with a learned
router's pooled route, the distillation loss included). On a machine without a GPU it runs the kernels in
Triton's interpreter (TRITON_INTERPRET=1): a smoke test, not a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if not torch.cuda.is_available():  # Triton's interpreter, read when a kernel is decorated: before any is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

import ssa_kernels.distill as distill  # noqa: E402
from ssa_kernels import PooledRoute, SSAConfig, ssa_attention  # noqa: E402
from ssa_kernels.distill import block_mass, distill_query_blocks  # noqa: E402

reference_target = block_mass  # router_distill_loss calls distill.block_mass: patched to force the reference


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, reps: int) -> float:
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t0) / reps * 1e3


def run(seq_len: int, batch: int, reps: int) -> list[dict]:
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: Triton's interpreter, a smoke test only
    g = torch.Generator(device=dev).manual_seed(0)
    hq, hkv, d = 8, 4, 64
    cfg = SSAConfig(block_size=64, topk_blocks=16, local_window=256, routing="distill", distill_blocks=0,
                    far_distance=1024, distill_target="attended")  # fmt: skip

    def r(h, grad=False):
        return torch.randn(batch, h, seq_len, d, device=dev, generator=g, dtype=torch.bfloat16).requires_grad_(grad)

    q, k, v, qf, kf = r(hq, True), r(hkv, True), r(hkv, True), r(hq, True), r(hkv, True)
    blocks = distill_query_blocks(seq_len, cfg, q.device)
    nb = -(-seq_len // cfg.block_size)
    rows = []
    target = (q.detach(), k.detach(), blocks, cfg.block_size, None, None, (qf.detach(), kf.detach()), cfg.local_blocks)
    ref = block_mass(*target, "reference")
    for backend in ("reference", "triton"):
        got = ref if backend == "reference" else block_mass(*target, backend)
        ms = timed(lambda backend=backend: block_mass(*target, backend), reps)
        rows.append({"seq_len": seq_len, "batch": batch, "part": "target", "backend": backend, "ms": round(ms, 3),
                     "max_abs_diff": float((got - ref).abs().max())})  # fmt: skip
        qm = torch.randn(batch, hkv, nb, d, device=dev, generator=g, requires_grad=True)
        km = torch.randn(batch, hkv, nb, d, device=dev, generator=g, requires_grad=True)

        def layer(qm=qm, km=km):
            out = ssa_attention(q, k, v, cfg, backend="triton", route=PooledRoute(qm, km, seq_len), far=(qf, kf))
            out.float().sum().backward()

        if backend == "triton":
            ms = timed(layer, reps)
        else:  # the same Triton layer with the reference target (the GPU path before the kernel)
            with mock.patch.object(
                distill,
                "block_mass",
                lambda *a, **kw: reference_target(*a[:8], backend="reference", rows=kw.get("rows", "mean")),
            ):
                ms = timed(layer, reps)
        rows.append({"seq_len": seq_len, "batch": batch, "part": "layer", "backend": backend, "ms": round(ms, 3),
                     "max_abs_diff": None})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", help="write the JSON here")
    args = p.parse_args(argv)
    rows = [row for n in args.lengths for row in run(n, args.batch, args.reps)]
    print("| seq_len | batch | part | backend | ms | max abs diff |\n|---:|---:|---|---|---:|---:|")
    for row in rows:
        diff = "" if row["max_abs_diff"] is None else f"{row['max_abs_diff']:.2e}"
        print(f"| {row['seq_len']} | {row['batch']} | {row['part']} | {row['backend']} | {row['ms']} | {diff} |")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (Triton interpreter: not a timing)"
    doc = {"device": device, "date": time.strftime("%Y-%m-%d"),
           "command": "python scripts/bench_distill.py " + " ".join(argv or sys.argv[1:]), "results": rows}  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=1))
    return doc


if __name__ == "__main__":
    main()
