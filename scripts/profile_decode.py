"""Where a graphed SSA decode step's time goes, kernel by kernel, at the attention benchmark's decode setup.

K consecutive tokens (n - 80 .. n - 80 + K - 1, as ``bench_attention.py``'s ``ssa_decode_fast_graph_k`` row) are
captured in one CUDA graph and replayed; one replay runs under the torch profiler, whose kernel records give each
kernel's time inside the step and the idle time between kernels (span minus busy). Each ``--variants`` entry
changes launch parameters before the capture:

- ``default``: the library's;
- ``pps=P``: ``decode.triton._PROGRAMS_PER_SM`` (split-K programs wanted per SM: fewer splits, more blocks each);
- ``select=R,W,C``: ``decode.fast.SELECT_TUNING`` rows, warps, head-dim chunk of the select kernel;
- ``awarps=W``: warps of the decode attention's split kernel;
- ``commit=0``: ``_commit_kernel`` as a launch of its own (``decode.fast.COMMIT_IN_UPDATE``); ``unroll=0``: the
  select kernel's head-dim chunks as a loop (``decode.fast.SELECT_UNROLL``);
- several joined by ``+`` (``pps=2+select=1,8,32``).

Dense decoding (torch SDPA FLASH over all n keys, graphed) runs in the same call, for the ratio.
bf16, 32 q / 8 kv heads, d = 128, batch 1, ``SSAConfig(block_size=B, topk_blocks=112 * 64 // B)``.

    python3 scripts/profile_decode.py --block-size 128 64 --variants default pps=2 select=1,8,32 --out $OUT
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script without an install (the device image)

from ssa_kernels import SSAConfig  # noqa: E402
from ssa_kernels.decode import fast as dfast  # noqa: E402
from ssa_kernels.decode import triton as dtri  # noqa: E402

sys.path.insert(0, str(REPO / "scripts"))
from bench_attention import capture, replay_ms  # noqa: E402  (the decode benchmark's capture and timing)


def apply(variant: str) -> None:
    """Set the launch parameters a variant names (on top of the defaults, which ``reset_knobs`` restores)."""
    for part in filter(None, variant.split("+")):
        if part == "default":
            continue
        key, _, val = part.partition("=")
        if key == "pps":
            dtri._PROGRAMS_PER_SM = int(val)
        elif key == "select":
            r, w, c = (int(x) for x in val.split(","))
            dfast.SELECT_TUNING = dataclasses.replace(dfast.SELECT_TUNING, rows=r, num_warps=w, dim_chunk=c)
        elif key == "awarps":
            dtri.SPLIT_WARPS = int(val)
        elif key == "commit":
            dfast.COMMIT_IN_UPDATE = bool(int(val))
        elif key == "unroll":
            dfast.SELECT_UNROLL = bool(int(val))
        else:
            raise SystemExit(f"unknown variant part {part!r}: use pps=, select=, awarps=, commit=, unroll=")


def kernels_of(graph, restore) -> list[tuple[str, float, float]]:
    """(name, start us, end us) of every kernel of one profiled replay, in start order."""
    restore()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        graph.replay()
        torch.cuda.synchronize()
    out = []
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA and "memcpy" not in e.name.lower():
            out.append((e.name, e.time_range.start, e.time_range.end))
    return sorted(out, key=lambda x: x[1])


def breakdown(kern: list[tuple[str, float, float]], steps: int) -> dict:
    """Per kernel name: us per step; busy (union of kernel intervals), span and idle, per step."""
    per: dict[str, float] = {}
    for name, t0, t1 in kern:
        short = name.split("(")[0][:60]
        per[short] = per.get(short, 0.0) + (t1 - t0) / steps
    busy, cur0, cur1 = 0.0, None, None
    for _, t0, t1 in kern:
        if cur1 is None or t0 > cur1:
            busy += 0.0 if cur1 is None else cur1 - cur0
            cur0, cur1 = t0, t1
        else:
            cur1 = max(cur1, t1)
    busy += 0.0 if cur1 is None else cur1 - cur0
    span = kern[-1][2] - kern[0][1] if kern else 0.0
    gaps = [kern[i + 1][1] - kern[i][2] for i in range(len(kern) - 1)]
    return {
        "kernels_per_step": len(kern) / steps,
        "us_per_step_by_kernel": {k: round(v, 2) for k, v in sorted(per.items(), key=lambda x: -x[1])},
        "busy_us_per_step": round(busy / steps, 2),
        "span_us_per_step": round(span / steps, 2),
        "idle_us_per_step": round((span - busy) / steps, 2),
        "median_gap_us": round(statistics.median(gaps), 2) if gaps else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1 << 20)
    ap.add_argument("--block-size", type=int, nargs="+", default=[128, 64])
    ap.add_argument("--steps", type=int, default=16, help="decode steps per graph")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--variants", nargs="+", default=["default"])
    ap.add_argument("--out", default=str(REPO / "docs" / "results"))
    args = ap.parse_args()
    n, steps, dev = args.n, args.steps, torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(1, 32, n, 128, device=dev, dtype=torch.bfloat16, generator=gen)
    k = torch.randn(1, 8, n, 128, device=dev, dtype=torch.bfloat16, generator=gen)
    v = torch.randn(1, 8, n, 128, device=dev, dtype=torch.bfloat16, generator=gen)
    scale, first = 128**-0.5, n - 80
    results = []

    qd = q[:, :, n - 1 :].reshape(1, 8, 4, 128)

    def dense(_i):
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(qd, k, v, scale=scale)

    dg = capture(dense)
    dense_ms = replay_ms(dg, lambda: None, args.reps)
    print(f"dense decode (SDPA flash, graphed) n={n}: {dense_ms * 1e3:.1f} us")
    knobs = ((dtri, "_PROGRAMS_PER_SM"), (dfast, "SELECT_TUNING"), (dtri, "SPLIT_WARPS"), (dfast, "COMMIT_IN_UPDATE"),
             (dfast, "SELECT_UNROLL"))  # fmt: skip
    defaults = [getattr(mod, name) for mod, name in knobs]

    def reset_knobs() -> None:
        for (mod, name), val in zip(knobs, defaults):
            setattr(mod, name, val)

    for bs in args.block_size:
        cfg = SSAConfig(block_size=bs, topk_blocks=112 * 64 // bs)
        with torch.no_grad():
            snap = dfast.DecodePyramid.from_prefill(q[:, :, :first], k[:, :, :first], cfg, capacity=n)
        for variant in args.variants:
            reset_knobs()
            apply(variant)
            state = snap.clone()

            def step(i, state=state, cfg=cfg):
                t = first + i
                return dfast.fast_decode_step(q[:, :, t : t + 1], k[:, :, t], v[:, :, t], k, v, state, cfg, scale)

            row = {"n": n, "block_size": bs, "variant": variant}
            try:
                with torch.no_grad():
                    reset = functools.partial(state.copy_, snap)
                    graph = capture(step, steps, reset)
                    ms = replay_ms(graph, reset, args.reps) / steps
                    row.update({"us_per_step": round(ms * 1e3, 2), "x_dense": round(dense_ms / ms, 2)})
                    row.update(breakdown(kernels_of(graph, reset), steps))
            except Exception as err:  # noqa: BLE001 - one failing variant must not lose the others
                row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
            results.append(row)
            print(json.dumps(row))
    reset_knobs()
    print(
        f"\n{'block':>5} {'variant':<28} {'us/step':>8} {'x dense':>8} {'busy':>7} {'idle':>7}  top kernels (us/step)"
    )
    for r in results:
        if "error" in r:
            print(f"{r['block_size']:>5} {r['variant']:<28} {r['error']}")
            continue
        top = ", ".join(f"{k_[:24]} {v_:.1f}" for k_, v_ in list(r["us_per_step_by_kernel"].items())[:5])
        print(
            f"{r['block_size']:>5} {r['variant']:<28} {r['us_per_step']:>8.1f} {r['x_dense']:>8.2f} "
            f"{r['busy_us_per_step']:>7.1f} {r['idle_us_per_step']:>7.1f}  {top}"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "device": torch.cuda.get_device_name(dev),
        "date": datetime.date.today().isoformat(),
        "command": "python3 scripts/profile_decode.py " + " ".join(sys.argv[1:]),
        "dense_decode_ms": dense_ms,
        "versions": {"torch": torch.__version__},
        "results": results,
    }
    (out / "decode-profile.json").write_text(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
