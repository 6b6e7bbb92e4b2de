"""Time the SSA selector on the GPU: the PyTorch reference (fp64 prefix sums + vectorised beam search) beside
the Triton fast path (``select_blocks_fast``). bf16, 32 q / 8 kv heads, d = 128, batch 1, default SSAConfig.
Prints a table and writes docs/results/selector-<gpu>.json (one row per n and method). The reference runs up
to ``--ref-max`` tokens (it needs ~10 GiB extra at 1M); ``--check`` compares the two selections at one n
(share of rows with the same routed set, and how far apart the fp64 scores of differing rows are);
``--sweep`` times the fast path under other launch parameters (rows,warps,dim_chunk) at ``--sweep-n``
tokens and keeps the fastest for the table. ``--beam-min`` times each of several ``SSAConfig.beam_min`` values
(the narrowest beam of the coarse-to-fine search; default: the config's). ``--scores`` times each of several
node/leaf scorings (``SSAConfig.node_score`` / ``leaf_score``: ``mean/mean``, the default, or ``bound/bound``, the
issue-6 recipe's, whose search also builds the sparse min / max tables), ``--beam-widths`` sets
``SSAConfig.beam_widths`` for every run (the recipe: 64). Fast rows also give ``summaries_ms``: pooling q and k and
building the pyramid, the part that reads the T x D inputs.

    python scripts/bench_selector.py --n 131072 524288 1048576 4194304 --check 32768
    python scripts/bench_selector.py --n 1048576 4194304 --ref-max 1048576 --check 32768 \
        --scores mean/mean bound/mean mean/bound bound/bound --beam-widths 64
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import sys
from pathlib import Path

import torch
import triton.testing

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script without an install (the device image)

from ssa_kernels import SSAConfig, select_blocks  # noqa: E402
from ssa_kernels.selector import fast, routing_scores, select_blocks_fast  # noqa: E402

METHODS = {"ssa_selector_reference": select_blocks, "ssa_selector_fast": select_blocks_fast}
# --bound-variants: the Tuning fields of the bound search as built (whole nodes apart from the partial ones), as the
# eighteenth session's kernel (every candidate both runs, a whole node's repeat masked; bf16 tables), the same with
# fp32 tables
BOUND_VARIANTS = (
    {"bound_edges_apart": True, "bound_tables_bf16": True},
    {"bound_edges_apart": False, "bound_tables_bf16": True},
    {"bound_edges_apart": False, "bound_tables_bf16": False},
)


def inputs(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(1, 32, n, 128, device="cuda", dtype=torch.bfloat16, generator=gen)
    return q, torch.randn(1, 8, n, 128, device="cuda", dtype=torch.bfloat16, generator=gen)


def measure(fn, q: torch.Tensor, k: torch.Tensor, cfg: SSAConfig) -> tuple[float, float, object]:
    """(median ms, extra peak GiB over the inputs, selection)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    sel = fn(q, k, cfg)
    torch.cuda.synchronize()
    extra = (torch.cuda.max_memory_allocated() - base) / 2**30
    ms = triton.testing.do_bench(lambda: fn(q, k, cfg), warmup=50, rep=300, return_mode="median")
    return ms, extra, sel


def check(n: int, cfg: SSAConfig) -> dict:
    """Fast vs reference on the same inputs: equal routed rows, and for the others the largest relative gap
    between their sorted fp64 scores (a near-tie swap leaves them equal to ~1e-6); under leaf_score=bound the
    routed blocks' bounds as each selector reports them (fp64 in the reference, fp32 in the kernel)."""
    q, k = inputs(n, seed=1)
    ref, got = select_blocks(q, k, cfg), select_blocks_fast(q, k, cfg)
    same = (ref.routed == got.routed).all(-1)
    if cfg.leaf_score == "bound":
        exact_ref = ref.routed_scores.double().sort(-1, descending=True).values
        exact_got = got.routed_scores.double().sort(-1, descending=True).values
    else:
        exact_ref = routing_scores(q.double(), k.double(), ref.routed, cfg).sort(-1, descending=True).values
        exact_got = routing_scores(q.double(), k.double(), got.routed, cfg).sort(-1, descending=True).values
    finite = torch.isfinite(exact_ref)
    scale = exact_ref[finite].abs().max().item()
    gap = (exact_ref - exact_got).abs().nan_to_num(0.0).max().item() / scale  # -inf - -inf: nan -> 0
    return {
        "n": n, "node_score": cfg.node_score, "leaf_score": cfg.leaf_score, "rows": same.numel(),
        "rows_equal": int(same.sum()), "share_equal": same.float().mean().item(),
        "max_score_gap_rel": gap, "indices_equal_rows": int((ref.indices == got.indices).all(-1).sum()),
        "candidates_equal_on_equal_rows": bool(torch.equal(ref.candidates[same], got.candidates[same])),
        "padding_same": bool(torch.equal(finite, torch.isfinite(exact_got))),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[131072, 524288, 1048576, 4194304])
    ap.add_argument("--ref-max", type=int, default=1048576, help="largest n the reference runs at")
    ap.add_argument("--check", type=int, nargs="*", default=[32768], help="n to compare fast with reference at")
    ap.add_argument("--sweep", nargs="*", default=[], help="rows,warps,dim_chunk launch parameters to try")
    ap.add_argument("--sweep-n", type=int, default=1048576)
    ap.add_argument("--beam-min", type=int, nargs="+", help="SSAConfig.beam_min values to time (default: config's)")
    ap.add_argument("--scores", nargs="+", default=["mean/mean"], help="node_score/leaf_score pairs to time")
    ap.add_argument("--beam-widths", type=int, nargs="*", default=[], help="SSAConfig.beam_widths of every run")
    ap.add_argument("--out", default=str(REPO / "docs" / "results"))
    ap.add_argument("--tag", default="", help="file name suffix: selector-<gpu>-<tag>.json")
    ap.add_argument("--bound-variants", type=int, nargs="?", const=len(BOUND_VARIANTS), default=0, metavar="K",
                    help="time bound scorings the first K (default all three) ways of BOUND_VARIANTS in one run: "
                         "as built (whole nodes one min and one max row, partial nodes apart; bf16 tables where "
                         "exact), the eighteenth session's kernel (both runs per candidate, a whole node's repeat "
                         "masked), the same with fp32 tables; rows get bound_edges_apart and bound_tables")  # fmt: skip
    args = ap.parse_args()
    cfg = SSAConfig(beam_widths=args.beam_widths)
    scorings = [tuple(x.split("/")) for x in args.scores]
    configs = [
        SSAConfig(beam_widths=args.beam_widths, beam_min=b, node_score=node, leaf_score=leaf)
        for b, (node, leaf) in itertools.product(args.beam_min or [cfg.beam_min], scorings)
    ]
    checks = []
    for n, (node, leaf) in itertools.product(args.check, scorings):
        checks.append(check(n, SSAConfig(beam_widths=args.beam_widths, node_score=node, leaf_score=leaf)))
        print("check", json.dumps(checks[-1]), flush=True)
    sweep = []
    if args.sweep:
        q, k = inputs(args.sweep_n)
        best = (float("inf"), fast.TUNING)
        for spec in args.sweep:
            rows, warps, chunk = (int(x) for x in spec.split(","))
            fast.TUNING = fast.Tuning(rows=rows, num_warps=warps, dim_chunk=chunk)
            ms, _, _ = measure(select_blocks_fast, q, k, cfg)
            sweep.append({"n": args.sweep_n, "rows": rows, "num_warps": warps, "dim_chunk": chunk, "ms": ms})
            print(f"sweep rows={rows} warps={warps} dim_chunk={chunk}: {ms:.2f} ms", flush=True)
            best = min(best, (ms, fast.TUNING), key=lambda x: x[0])
        fast.TUNING = best[1]
        print(f"using {fast.TUNING}", flush=True)
        del q, k
    results = []
    tuning = fast.TUNING  # the sweep's pick (or the default); --bound-variants varies the bound fields per run
    for n in args.n:
        q, k = inputs(n)
        runs = []
        for (method, fn), cfg in itertools.product(METHODS.items(), configs):
            bound = "bound" in (cfg.node_score, cfg.leaf_score)
            variants = BOUND_VARIANTS[: args.bound_variants] if fn is select_blocks_fast and bound else ()
            variants = variants or (None,)
            runs += [(method, fn, cfg, v) for v in variants]
        for method, fn, cfg, variant in runs:
            if fn is select_blocks and n > args.ref_max:
                continue
            fast.TUNING = tuning if variant is None else dataclasses.replace(tuning, **variant)
            ms, extra, sel = measure(fn, q, k, cfg)
            fast.TUNING = tuning
            routed = (sel.routed >= 0).sum(-1).float()
            row = {
                "n": n, "method": method, "pass": "selector", "ms": ms, "extrapolated": False,
                "extra_peak_gib": extra, "max_candidates": int(sel.candidates.max()),
                "mean_routed": routed[..., 16:].mean().item(), "beam_min": cfg.beam_min,
                "beam_widths": cfg.beam_widths, "node_score": cfg.node_score, "leaf_score": cfg.leaf_score,
            }  # fmt: skip
            if variant is not None:
                row["bound_tables"] = "bf16 where exact" if variant["bound_tables_bf16"] else "fp32"
                row["bound_edges_apart"] = variant["bound_edges_apart"]
                how = "edges apart" if variant["bound_edges_apart"] else "2 gathers"
                method = f"{method} ({row['bound_tables']}, {how})"
            if fn is select_blocks_fast:
                row["summaries_ms"] = triton.testing.do_bench(
                    lambda q=q, k=k, cfg=cfg: fast._summaries(q, k, cfg), warmup=25, rep=100, return_mode="median"
                )
            results.append(row)
            print(f"n={n:>8}  {method:<24} {cfg.node_score}/{cfg.leaf_score} beam_min {cfg.beam_min:>3} {ms:9.2f} ms"
                  f"  extra {extra:6.2f} GiB  max candidates "
                  f"{row['max_candidates']}  mean routed {row['mean_routed']:.1f}/{cfg.topk_blocks}"
                  f"  summaries {row.get('summaries_ms', float('nan')):.2f} ms", flush=True)  # fmt: skip
            del sel
        del q, k
        torch.cuda.empty_cache()
    gpu = torch.cuda.get_device_name()
    doc = {"device": gpu, "date": datetime.date.today().isoformat(), "torch": torch.__version__,
           "triton": triton.__version__, "tuning": vars(fast.TUNING),
           "command": "python scripts/bench_selector.py " + " ".join(sys.argv[1:]),
           "results": results, "checks": checks, "sweep": sweep}  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"selector-{gpu.replace('NVIDIA ', '').split()[0].lower()}{'-' + args.tag if args.tag else ''}.json"
    (out / name).write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
