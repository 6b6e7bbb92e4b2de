"""Time the SSA selector reference (pyramid prefix sums + beam search) on the GPU: bf16, 32 q / 8 kv
heads, d = 128, batch 1, default SSAConfig. Prints a table and writes
docs/results/selector-<gpu>.json. The reference is the oracle for the Triton selector (issue 4).

    python scripts/bench_selector.py --n 131072 1048576
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch
import triton.testing

from ssa_kernels import SSAConfig, select_blocks

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[8192, 32768, 131072, 524288, 1048576])
    ap.add_argument("--out", default=str(REPO / "docs" / "results"))
    args = ap.parse_args()
    cfg = SSAConfig()
    results = []
    for n in args.n:
        q = torch.randn(1, 32, n, 128, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(1, 8, n, 128, device="cuda", dtype=torch.bfloat16)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        sel = select_blocks(q, k, cfg)
        extra = (torch.cuda.max_memory_allocated() - base) / 2**30
        ms = triton.testing.do_bench(
            lambda q=q, k=k: select_blocks(q, k, cfg), warmup=50, rep=300, return_mode="median"
        )
        routed = (sel.routed >= 0).sum(-1).float()
        row = {
            "n": n, "method": "ssa_selector_reference", "pass": "selector", "ms": ms, "extrapolated": False,
            "extra_peak_gib": extra, "max_candidates": int(sel.candidates.max()),
            "mean_routed": routed[..., 16:].mean().item(),
        }  # fmt: skip
        results.append(row)
        print(f"n={n:>8}  {ms:9.2f} ms  extra {extra:6.2f} GiB  max candidates {row['max_candidates']}"
              f"  mean routed {row['mean_routed']:.1f}/{cfg.topk_blocks}", flush=True)  # fmt: skip
    gpu = torch.cuda.get_device_name()
    doc = {"device": gpu, "date": datetime.date.today().isoformat(),
           "command": "python scripts/bench_selector.py " + " ".join(sys.argv[1:]), "results": results}  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"selector-{gpu.replace('NVIDIA ', '').split()[0].lower()}.json").write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
