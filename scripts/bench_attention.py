"""Official attention benchmark: one layer of SSA against dense FlashAttention-2 / cuDNN and FlexAttention.

Shape: batch 1, 32 query / 8 kv heads, d = 128, bf16, causal, default ``SSAConfig()`` (blocks of 64, top-112
routed, 1024-token local window, 1 sink block: ~8K attended tokens per query). For each n it times

- ``ssa``: ``ssa_kernels.ssa_attention(q, k, v, cfg, backend=--backend)``, selection included;
  ``ssa_selector`` (pass "selector"): the selector alone (``select_blocks``, or ``--selector fast``);
- ``fa2_sdpa`` (torch SDPA, FLASH backend), ``flash_attn`` (the package, if importable), ``cudnn_sdpa``
  (SDPA, cuDNN backend): dense causal;
- ``flex``: compiled FlexAttention given SSA's own selection as a BlockMask (see ``flex_block_mask``). Default
  Flex block 128 with the selection remapped at SSA's token budget: on an H100 (torch 2.11) it ran the forward
  1.7x faster than 64-blocks with 64-row tiles (12.9 vs 22.2 ms at 32K), and Flex's backward has no kernel
  configuration for 64-blocks at d = 128 on sm90 (NoValidChoicesError); ``--flex-block 64 128`` times both;

for the passes "fwd" and "fwdbwd" (forward + backward of a random dO), and at ``--decode-n`` the pass
"decode": one new token with SSA (``ssa_decode_step``, the reference path; the Triton kernel
``decode_attention_triton`` given that step's selection, launched from Python and replayed from a CUDA graph;
and the step with the Triton kernel as its attention) against dense decoding (SDPA over the whole KV cache). Times are CUDA-event medians after a
warm-up call. A measurement whose predicted time (from the largest measured n, scaled by n^2 for dense and
n for the sparse methods) exceeds the per-call cap, or a dense one above --dense-fwd-max / --dense-fwdbwd-max,
is not run but extrapolated and marked ``"extrapolated": true``. Errors (OOM included) are recorded in the
row's "error" field and the run goes on.

Writes ``<out>/attention-<gpu>.json`` (``attention-<gpu>-quick.json`` with --quick) ({"device", "date", "command", "results": [{"n", "method", "pass", "ms",
"extrapolated", ...}], ...}) after every row, prints a table and a ratio summary, and plots ms vs n
(``attention-<gpu>.png``, if matplotlib is installed).

    PYTHONPATH=. python3 scripts/bench_attention.py                    # default sizes, ~8 min on an H100
    PYTHONPATH=. python3 scripts/bench_attention.py --quick --backend triton
    python3 scripts/bench_attention.py --cpu-smoke --out /tmp/bench  # CPU, tiny shapes (tests)
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import gc
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
KI, MI = 1024, 1024 * 1024
DEFAULT_N = [8 * KI, 16 * KI, 32 * KI, 128 * KI, 512 * KI, MI]
BIG_GPU_N = [2 * MI, 4 * MI]  # added to the defaults on GPUs with more than 100 GB
QUICK_N = [8 * KI, 16 * KI, 32 * KI]
SMOKE_N = [128, 256]
DENSE = ("fa2_sdpa", "flash_attn", "cudnn_sdpa")
FLEX_NOTE = (
    "BlockMask built from the SSA selection of kv head 0, broadcast to all heads (H=1): the same FLOPs as "
    "per-head selections, without a per-head kv_indices of width n/block"
)


def size(text: str) -> int:
    """'8K', '1M', '131072' -> tokens."""
    text = text.strip().upper()
    mult = {"K": KI, "M": MI}.get(text[-1:], 1)
    return int(float(text[:-1] if mult > 1 else text) * mult)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=size, nargs="+", help="sequence lengths (8K, 1M, ...); default 8K..1M (+2M, 4M)")
    ap.add_argument("--decode-n", type=size, nargs="*", help="n of the decode pass (default 128K 1M; among --n)")
    ap.add_argument("--reps", type=int, default=3, help="timed calls per measurement (median)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls first (compilation, autotuning)")
    ap.add_argument("--backend", default="auto", help="ssa_attention backend")
    ap.add_argument("--selector", choices=("reference", "fast"), default="reference", help="selector to time")
    ap.add_argument("--out", default=str(REPO / "docs" / "results"), help="directory of the JSON and the plot")
    ap.add_argument("--quick", action="store_true", help="small n only (8K, 16K, 32K; decode at 32K)")
    ap.add_argument("--cpu-smoke", action="store_true", help="CPU, fp32, tiny shapes, eager Flex, no cuDNN")
    ap.add_argument("--cap-s", type=float, default=3.0, help="dense: largest predicted time of one call")
    ap.add_argument("--sparse-cap-s", type=float, default=10.0, help="SSA and Flex: largest predicted call time")
    ap.add_argument("--dense-fwd-max", type=size, default=256 * KI, help="largest n of a measured dense fwd")
    ap.add_argument("--dense-fwdbwd-max", type=size, default=128 * KI, help="largest n of a measured dense fwdbwd")
    ap.add_argument("--flex-block", type=int, nargs="+", help="Flex block size(s): 64 exact, 128 remapped")
    ap.add_argument(
        "--block-size",
        type=int,
        default=64,
        choices=(64, 128),
        help="SSA block; 128 keeps the ~8.2K-token budget (top-56) and Flex gets the exact selection",
    )
    ap.add_argument("--methods", nargs="+", help="run only these methods (default all)")
    ap.add_argument("--kernel-config", default="",
                    help='SSA attention kernels\' CONFIG_OVERRIDE, e.g. "fwd:num_stages=3" (kind:key=int,...; the JSON gets '
                         'a -kcfg suffix)')  # fmt: skip
    ap.add_argument("--decode-only", action="store_true", help="only the decode pass (at --decode-n)")
    ap.add_argument("--decode-select-sweep", nargs="*", help="decode select kernel rows,warps,chunk to time")
    args = ap.parse_args(argv)
    if args.cpu_smoke:
        args.n = args.n or SMOKE_N
        args.decode_n = SMOKE_N[-1:] if args.decode_n is None else args.decode_n
        args.reps, args.warmup = min(args.reps, 1), 0
        if "--dense-fwdbwd-max" not in (sys.argv if argv is None else argv):
            args.dense_fwdbwd_max = SMOKE_N[0]  # exercise the extrapolation path
    elif args.quick:
        args.n = args.n or QUICK_N
        args.decode_n = [max(args.n)] if args.decode_n is None else args.decode_n
    args.decode_n = [128 * KI, MI] if args.decode_n is None else args.decode_n
    return args


# --------------------------------------------------------------------------------------------------- timing


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in obj (a tensor, tuple / list, or dataclass such as Selection)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (tuple, list)):
        return sum(tensor_bytes(x) for x in obj)
    if dataclasses.is_dataclass(obj):
        return sum(tensor_bytes(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    return 0


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


class Bench:
    """Runs and records measurements; remembers the largest measured n of each (method, pass) to predict and
    extrapolate larger ones, and the OOM failures so that larger n are not retried."""

    def __init__(self, args: argparse.Namespace, device: torch.device, meta: dict[str, Any], path: Path):
        self.args, self.device, self.meta, self.path = args, device, meta, path
        self.cuda = device.type == "cuda"
        self.results: list[dict[str, Any]] = []
        self.last: dict[tuple[str, str], tuple[int, float]] = {}
        self.oom: dict[tuple[str, str], int] = {}

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def time_call(self, call: Callable[[], Any], iters: int) -> tuple[float, Any]:
        """ms per call of `iters` back-to-back calls, and the last call's output."""
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                out = call()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / iters, out
        t0 = time.perf_counter()
        for _ in range(iters):
            out = call()
        return (time.perf_counter() - t0) * 1e3 / iters, out

    def record(self, row: dict[str, Any]) -> None:
        self.results.append(row)
        ms = "-" if row["ms"] is None else f"{row['ms']:10.3f}"
        flag = " (extrapolated)" if row["extrapolated"] else ""
        err = f"  ERROR {row['error']}" if "error" in row else ""
        print(f"n={row['n']:>8}  {row['method']:<22} {row['pass']:<8} {ms:>10} ms{flag}{err}", flush=True)
        self.save()

    def save(self) -> None:
        doc = {**self.meta, "results": self.results}
        self.path.write_text(json.dumps(doc, indent=1))

    def run(
        self,
        n: int,
        method: str,
        pass_: str,
        build: Callable[[], Callable[[], Any]],
        *,
        exponent: float,
        cap_s: float,
        max_n: int | None = None,
        iters: int = 1,
        memory: bool = False,
        **extra: Any,
    ) -> dict[str, Any] | None:
        """Measure build()() at n (build() makes the callable: allocations and compilation stay outside the
        timing), or extrapolate it from the largest measured n when over max_n or the predicted time cap."""
        if self.args.methods and method not in self.args.methods:
            return None
        key = (method, pass_)
        row: dict[str, Any] = {"n": n, "method": method, "pass": pass_, "ms": None, "extrapolated": False, **extra}
        if key in self.oom:
            row["error"] = f"skipped: out of memory at n={self.oom[key]}"
            self.record(row)
            return row
        last = self.last.get(key)
        predicted = last[1] * (n / last[0]) ** exponent if last else None
        if (max_n is not None and n > max_n) or (predicted is not None and predicted > cap_s * 1e3):
            if last is None:
                row["error"] = f"skipped: n > {max_n} and nothing smaller measured"
            else:
                row.update(ms=predicted, extrapolated=True, extrapolated_from_n=last[0], exponent=exponent)
            self.record(row)
            return row
        try:
            t0 = time.perf_counter()
            call = build()
            for _ in range(self.args.warmup):
                call()
            self.sync()
            row["setup_s"] = round(time.perf_counter() - t0, 3)  # build + warm-up: compilation shows here
            times = []
            for i in range(max(1, self.args.reps)):
                measure_mem = memory and self.cuda and i == 0
                if measure_mem:
                    gc.collect()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                ms, out = self.time_call(call, iters)
                if measure_mem:
                    # Beyond the inputs (q, k, v, dO: allocated before) and the outputs (o, and dq, dk, dv).
                    extra_b = torch.cuda.max_memory_allocated() - base - tensor_bytes(out)
                    row["extra_gib"] = round(extra_b / 2**30, 4)
                del out
                times.append(ms)
                if sum(times) > 2 * cap_s * 1e3:  # a slow point: fewer reps
                    break
            row.update(ms=statistics.median(times), reps=len(times))
            self.last[key] = (n, row["ms"])
        except Exception as err:  # noqa: BLE001 - one failure must not end the run
            row["error"] = f"{type(err).__name__}: {str(err).strip()[:400]}"
            if is_oom(err):
                self.oom[key] = n
        finally:
            call = None
            gc.collect()
            if self.cuda:
                torch.cuda.empty_cache()
        self.record(row)
        return row


# ---------------------------------------------------------------------------------------------- methods


def dense_call(kind: str, q, k, v, grad: bool, d_o) -> tuple[Callable[[], Any], str]:
    """Dense causal attention by `kind` ("fa2_sdpa", "cudnn_sdpa", "flash_attn"); returns the callable and how
    GQA is handled. SDPA first tries enable_gqa; where the backend refuses, k and v are repeated to Hq heads
    once, outside the timing."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if kind == "flash_attn":
        from flash_attn import flash_attn_func  # [B, T, H, D] layout, GQA native

        qt, kt, vt = (x.detach().transpose(1, 2).contiguous().requires_grad_(grad) for x in (q, k, v))
        dot = d_o.transpose(1, 2).contiguous() if grad else None

        def fa(qt=qt, kt=kt, vt=vt):
            return flash_attn_func(qt, kt, vt, causal=True)

        return _with_grad(fa, (qt, kt, vt), dot) if grad else fa, "native"
    backend = {"fa2_sdpa": SDPBackend.FLASH_ATTENTION, "cudnn_sdpa": SDPBackend.CUDNN_ATTENTION}[kind]

    def sdpa(q=q, k=k, v=v, gqa=True):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)

    try:
        with torch.no_grad():
            sdpa(q[:, :, :128], k[:, :, :128], v[:, :, :128])
        how, fn, leaves = "enable_gqa", sdpa, (q, k, v)
    except Exception:  # noqa: BLE001 - no kernel for GQA in this backend / torch version
        g = q.shape[1] // k.shape[1]
        kr, vr = (x.detach().repeat_interleave(g, 1).requires_grad_(grad) for x in (k, v))
        how, leaves = "repeat_kv (outside the timing)", (q, kr, vr)

        def fn(q=q, kr=kr, vr=vr):
            return sdpa(q, kr, vr, gqa=False)

    return (_with_grad(fn, leaves, d_o) if grad else fn), how


def _with_grad(fwd: Callable[[], torch.Tensor], leaves, d_o) -> Callable[[], Any]:
    """forward + backward of d_o; returns (o, *grads) so their memory counts as output, not extra."""

    def call():
        o = fwd()
        return (o, *torch.autograd.grad(o, leaves, d_o))

    return call


def flex_block_mask(sel, cfg, n: int, block: int, device: torch.device):
    """BlockMask for FlexAttention from SSA's selection of (batch 0, kv head 0), broadcast to all heads.

    block == cfg.block_size: the exact selection (listed blocks before the diagonal are full blocks, the
    diagonal a causal partial block). block == 2 * cfg.block_size: Flex's own tile size; per 2B query block
    (the selection of its second B-row) the sink and local blocks map to 2B-blocks, then routed 2B-blocks in
    order of their best routed score until the SSA row's token budget is reached, so both attend the same
    number of tokens (to within one 2B-block). Returns (block_mask, attended tokens per query block: SSA, Flex).
    """
    from torch.nn.attention.flex_attention import BlockMask

    bsz = cfg.block_size
    idx = sel.indices[0, 0]  # (nb, S)
    nb = idx.shape[0]
    ssa_tokens = (idx >= 0).sum(-1).float().mean().item() * bsz
    if block == bsz:
        cols, listed = idx, idx >= 0  # (nq, S)
        nq = nb
    elif block == 2 * bsz:
        nq = -(-n // block)
        rows = (2 * torch.arange(nq, device=device) + 1).clamp(max=nb - 1)  # (nq,): B-row standing for 2B-row j
        prio = torch.full((nq, nq), -math.inf, device=device)  # (nq, nq) dense: n/128 x n/128 floats
        routed, scores = sel.routed[0, 0, rows], sel.routed_scores[0, 0, rows].float()  # (nq, topk)
        ok = routed >= 0
        prio.scatter_reduce_(1, torch.where(ok, routed // 2, 0), torch.where(ok, scores, -math.inf), "amax")
        # Sinks and the local window (the selector's union rule) come first whatever the scores.
        local = rows[:, None] - torch.arange(cfg.local_blocks, device=device)  # (nq, L)
        must = torch.cat([local.clamp(min=-1), torch.arange(cfg.sink_blocks, device=device).expand(nq, -1)], 1)
        must = torch.where(must >= 0, must // 2, torch.arange(nq, device=device)[:, None])
        prio.scatter_(1, must, math.inf)
        budget = (idx[rows] >= 0).sum(-1) * bsz  # (nq,) tokens SSA attends for that row
        count = (-(-budget // block)).clamp(max=nq)  # (nq,) 2B-blocks Flex gets
        top, cols = prio.topk(int(count.max()), dim=-1)  # (nq, K)
        listed = (torch.arange(cols.shape[1], device=device) < count[:, None]) & (top > -math.inf)
        del prio
    else:
        raise ValueError(f"flex block {block}: use {bsz} (exact) or {2 * bsz} (remapped)")
    diag = torch.arange(nq, device=device)[:, None]
    big = torch.iinfo(torch.int32).max

    def ordered(keep):  # (nq, K) -> [1, 1, nq] counts and [1, 1, nq, nq] ascending column lists
        num = keep.sum(-1).to(torch.int32)
        ind = torch.where(keep, cols, big).sort(-1).values
        ind = torch.where(ind == big, 0, ind).to(torch.int32)
        ind = F.pad(ind, (0, nq - ind.shape[1])) if ind.shape[1] < nq else ind[:, :nq]
        return num[None, None].contiguous(), ind[None, None].contiguous()

    full_num, full_ind = ordered(listed & (cols < diag))
    part_num, part_ind = ordered(listed & (cols == diag))
    flex_tokens = (listed & (cols <= diag)).sum(-1).float().mean().item() * block

    # The mask_mod states the whole mask (causal and listed), as Flex's contract asks: compiled kernels evaluate it
    # on the partial (diagonal) blocks only, but eager Flex applies it alone to every score.
    allowed = torch.zeros(nq, nq + 1, dtype=torch.bool, device=device)  # last column: sink of unlisted entries
    allowed = allowed.scatter_(1, torch.where(listed, cols, nq), True)[:, :nq].contiguous()  # (nq, nq)

    def listed_causal(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & allowed[q_idx // block, kv_idx // block]

    mask = BlockMask.from_kv_blocks(part_num, part_ind, full_num, full_ind, BLOCK_SIZE=block, mask_mod=listed_causal)
    return mask, ssa_tokens, flex_tokens


# ------------------------------------------------------------------------------------------------- main


def gpu_tag(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device).replace("NVIDIA ", "")
    return name.split()[0].lower()


@dataclasses.dataclass
class Setup:
    """What every size needs: shapes, config, the functions under test."""

    args: argparse.Namespace
    device: torch.device
    dtype: torch.dtype
    hq: int
    hkv: int
    d: int
    cfg: Any  # SSAConfig
    select_fn: Callable
    flex_fn: Callable | None
    flex_blocks: list[int]
    dense: list[str]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.cpu_smoke:
        # Triton kernels run in the interpreter on CPU tensors; read when a kernel module is first imported.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    elif not torch.cuda.is_available():
        sys.exit("no GPU: use --cpu-smoke")
    from ssa_kernels import SSAConfig

    if args.kernel_config:  # e.g. a kernel variant not yet the default, timed against the baselines in one run
        import ssa_kernels.attention.triton as tri

        tri.CONFIG_OVERRIDE.update(tri.parse_config_override(args.kernel_config))
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    if args.cpu_smoke:
        dtype, hq, hkv, d = torch.float32, 4, 2, 32
        cfg = SSAConfig(block_size=16, topk_blocks=2, local_window=64)
    else:
        dtype, hq, hkv, d = torch.bfloat16, 32, 8, 128
        cfg = SSAConfig(block_size=args.block_size, topk_blocks=112 * 64 // args.block_size)
        if args.n is None:
            big = torch.cuda.get_device_properties(device).total_memory > 100e9
            args.n = DEFAULT_N + (BIG_GPU_N if big else [])
    if args.selector == "fast":  # another engineer's module: imported only when asked for
        from ssa_kernels.selector.fast import select_blocks_fast as select_fn
    else:
        from ssa_kernels.selector import select_blocks as select_fn
    flex_fn = None
    if not args.methods or any(m.startswith("flex") for m in args.methods):
        import torch.nn.attention.flex_attention as fa

        if device.type == "cuda":
            # Static shapes: one specialised kernel per n. With the default automatic dynamic shapes the second
            # n recompiles a shape-generic kernel, measured 25% slower at 1M on H200 (fwd 490 vs 393 ms, fwd+bwd
            # 1901 vs 1432 ms): an unfair baseline.
            flex_fn = torch.compile(fa.flex_attention, dynamic=False)
        else:  # smoke test: eager and undynamo'd (fast to start; forward only, which is all CPU Flex has)
            fa._FLEX_ATTENTION_DISABLE_COMPILE_DEBUG = True
            flex_fn = fa.flex_attention
    dense = list(DENSE)
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        dense.remove("flash_attn")
    if device.type != "cuda":
        dense = ["fa2_sdpa"]  # torch's CPU flash kernel; no cuDNN, no flash-attn
    # Flex's own tile is 128: 64-blocks are remapped to it, 128-blocks are given exactly.
    flex_blocks = args.flex_block or [min(128, 2 * cfg.block_size)]
    setup = Setup(args, device, dtype, hq, hkv, d, cfg, select_fn, flex_fn, flex_blocks, dense)

    tag = gpu_tag(device) + ("-quick" if args.quick else "")  # a quick run never replaces the full results
    tag += "" if args.cpu_smoke or args.block_size == 64 else f"-b{args.block_size}"
    tag += "-kcfg" if args.kernel_config else ""
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke test)",
        "date": datetime.date.today().isoformat(),
        "command": "python3 scripts/bench_attention.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "config": {
            "batch": 1,
            "hq": hq,
            "hkv": hkv,
            "d": d,
            "dtype": str(dtype).replace("torch.", ""),
            "causal": True,
            "ssa": dataclasses.asdict(cfg),
            "backend": args.backend,
            "selector": args.selector,
            "reps": args.reps,
            "warmup": args.warmup,
            "cap_s": args.cap_s,
            "sparse_cap_s": args.sparse_cap_s,
            "dense_fwd_max": args.dense_fwd_max,
            "dense_fwdbwd_max": args.dense_fwdbwd_max,
            "flex_blocks": setup.flex_blocks,
        },  # fmt: skip
        "versions": {"torch": torch.__version__, "python": sys.version.split()[0]},
    }
    try:
        import triton

        meta["versions"]["triton"] = triton.__version__
    except ImportError:
        pass
    bench = Bench(args, device, meta, out_dir / f"attention-{tag}.json")
    t_start = time.perf_counter()
    for n in sorted(set(args.decode_n) if args.decode_only else set(args.n) | set(args.decode_n)):
        run_size(bench, setup, n)
        gc.collect()
        if bench.cuda:
            torch.cuda.empty_cache()
    meta["wall_s"] = round(time.perf_counter() - t_start, 1)
    print_table(bench.results)
    meta["ratios"] = ratios(bench.results)
    bench.save()
    plot(bench.results, out_dir / f"attention-{tag}.png", meta["device"])
    print(f"wrote {bench.path} in {meta['wall_s']} s")
    return {**meta, "results": bench.results}


def run_size(bench: Bench, s: Setup, n: int) -> None:
    """Sequence length n: every method in fwd and fwdbwd if n is in --n, the decode pass if n is in --decode-n."""
    gen = torch.Generator(device=s.device).manual_seed(n)
    q, k, v = (torch.randn(1, h, n, s.d, device=s.device, dtype=s.dtype, generator=gen) for h in (s.hq, s.hkv, s.hkv))
    if n in s.args.n and not s.args.decode_only:
        d_o = torch.randn(1, s.hq, n, s.d, device=s.device, dtype=s.dtype, generator=gen)
        run_passes(bench, s, n, q, k, v, d_o)
        del d_o
    if n in s.args.decode_n:
        decode(bench, s, n, q, k, v)


def run_passes(bench: Bench, s: Setup, n: int, q, k, v, d_o) -> None:
    """fwd and fwdbwd of every method (and the selector) at n."""
    # The same storage serves both passes (no clones: at 4M tokens they would be 48 GiB): grads come from
    # torch.autograd.grad; the forward-only calls get detached views.
    qg, kg, vg = (x.requires_grad_(True) for x in (q, k, v))
    try:
        _run_passes(bench, s, n, q.detach(), k.detach(), v.detach(), qg, kg, vg, d_o)
    finally:
        for x in (q, k, v):
            x.requires_grad_(False)


def _run_passes(bench: Bench, s: Setup, n: int, q, k, v, qg, kg, vg, d_o) -> None:
    from ssa_kernels import ssa_attention

    args, cfg = s.args, s.cfg
    sparse = {"exponent": 1.0, "cap_s": args.sparse_cap_s}
    ssa_info = {"backend": args.backend}

    # --- SSA: the selector alone, forward (selection included), forward + backward
    bench.run(
        n,
        "ssa_selector",
        "selector",
        lambda: lambda: s.select_fn(q, k, cfg),
        memory=True,
        selector=args.selector,
        **sparse,
    )
    with torch.no_grad():
        bench.run(
            n,
            "ssa",
            "fwd",
            lambda: lambda: ssa_attention(q, k, v, cfg, backend=args.backend),
            memory=True,
            **ssa_info,
            **sparse,
        )

    def ssa_fwdbwd():
        return _with_grad(lambda: ssa_attention(qg, kg, vg, cfg, backend=args.backend), (qg, kg, vg), d_o)

    bench.run(n, "ssa", "fwdbwd", ssa_fwdbwd, memory=True, **ssa_info, **sparse)

    # --- FlexAttention given SSA's selection
    if bench.cuda and s.flex_fn is not None:
        # A fresh static compile per n: past dynamo's recompile limit (8) Flex would fall back to eager, which
        # materialises the n x n scores (measured: a 32 TiB allocation at 512K).
        torch._dynamo.reset()
    for blk in s.flex_blocks if s.flex_fn is not None else []:
        method = "flex" if len(s.flex_blocks) == 1 else f"flex_b{blk}"
        info: dict[str, Any] = {"flex_block": blk, "note": FLEX_NOTE}
        if blk == 2 * cfg.block_size:
            info["note"] += f"; selection remapped to {blk}-blocks at SSA's token budget per query block"
        # Flex's default H100 forward tile is 128 queries: a 64-row block mask needs 64-row tiles.
        opts = {"BLOCK_M": blk, "BLOCK_N": min(blk, 64)} if blk < 128 and bench.cuda else None
        try:
            with torch.no_grad():
                mask, ssa_tok, flex_tok = flex_block_mask(s.select_fn(q, k, cfg), cfg, n, blk, s.device)
            info.update(ssa_tokens_per_query=round(ssa_tok, 1), flex_tokens_per_query=round(flex_tok, 1))
        except Exception as err:  # noqa: BLE001 - recorded, the run goes on
            mask, info["error"] = None, f"block mask: {type(err).__name__}: {str(err)[:300]}"
        for pass_ in ("fwd", "fwdbwd") if bench.cuda else ("fwd",):  # no Flex backward on CPU
            if mask is None:
                bench.record({"n": n, "method": method, "pass": pass_, "ms": None, "extrapolated": False, **info})
                continue
            grad = pass_ == "fwdbwd"

            def flex_build(grad=grad, mask=mask, opts=opts):
                a, b, c = (qg, kg, vg) if grad else (q, k, v)

                def fwd():
                    return s.flex_fn(a, b, c, block_mask=mask, enable_gqa=True, kernel_options=opts)

                return _with_grad(fwd, (a, b, c), d_o) if grad else torch.no_grad()(fwd)

            bench.run(n, method, pass_, flex_build, memory=grad, **info, **sparse)
        mask = None

    # --- dense causal
    for kind in s.dense:
        for pass_, max_n in (("fwd", args.dense_fwd_max), ("fwdbwd", args.dense_fwdbwd_max)):
            grad = pass_ == "fwdbwd"
            how: dict[str, str] = {}

            def dense_build(kind=kind, grad=grad, how=how):
                a, b, c = (qg, kg, vg) if grad else (q, k, v)
                fn, how["gqa"] = dense_call(kind, a, b, c, grad, d_o)
                return fn if grad else torch.no_grad()(fn)

            row = bench.run(n, kind, pass_, dense_build, exponent=2.0, cap_s=args.cap_s, max_n=max_n, memory=grad)
            if row is not None and how:
                row["gqa"] = how["gqa"]


def capture(fn: Callable[[int], Any], steps: int = 1, reset: Callable[[], Any] = lambda: None) -> torch.cuda.CUDAGraph:
    """fn(0) .. fn(steps - 1) captured in one CUDA graph, after a warm-up run of them on a side stream (compilation
    and autotuning stay out of the capture) and then ``reset()`` (e.g. restoring the state the warm-up advanced)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(steps):
            fn(i)
    torch.cuda.current_stream().wait_stream(side)
    reset()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(steps):
            fn(i)
    return graph


def graphed(fn: Callable[[], Any]) -> Callable[[], Any]:
    """fn captured once in a CUDA graph (after a warm-up call on a side stream); returns its replay."""
    return capture(lambda _i: fn()).replay


def decode(bench: Bench, s: Setup, n: int, q, k, v) -> None:
    """Decode pass at n: one new token at position n - 1, whose k, v the cache of n tokens already holds. The
    reference step (selection + attention), the Triton kernel alone on that step's selection, the step with the
    Triton kernel as its attention, and dense decoding over all n keys."""
    from ssa_kernels.decode import DecodeState, ssa_decode_step
    from ssa_kernels.decode import reference as decode_ref

    cfg, scale = s.cfg, s.d**-0.5
    iters = 10 if bench.cuda else 1  # calls per timing: a decode call is ~10-100 us
    run = {"exponent": 1.0, "cap_s": s.args.sparse_cap_s, "iters": iters}
    q_new = q[:, :, n - 1 :]  # (1, Hq, 1, D)
    try:
        with torch.no_grad():
            state0 = DecodeState.from_prefill(q[:, :, : n - 1], k[:, :, : n - 1], cfg)
    except Exception as err:  # noqa: BLE001
        row = {"n": n, "method": "ssa_decode_reference", "pass": "decode", "ms": None, "extrapolated": False}
        bench.record({**row, "error": f"from_prefill: {type(err).__name__}: {str(err)[:300]}"})
        return

    # A step changes its state in place only by re-writing the same prefix row: a shallow copy per call restores
    # the rest, so every timed call decodes the same token. The first call records the attention's arguments.
    orig_attend, captured = decode_ref._attend_rows, []

    cfg_ref = dataclasses.replace(cfg, backend="reference")  # auto would dispatch to the Triton kernel on CUDA

    def step(attend=None, step_cfg=cfg_ref):
        decode_ref._attend_rows = attend or orig_attend
        try:
            with torch.no_grad():
                return ssa_decode_step(q_new, k, v, copy.copy(state0), step_cfg, scale=scale)
        finally:
            decode_ref._attend_rows = orig_attend

    try:
        want = step(lambda *a: captured.append(a) or orig_attend(*a))
        sel_args = captured[0]  # (q, k_cache, v_cache, indices, q_pos, key_start, block_size, scale)
        from ssa_kernels.decode import decode_attention_triton
    except Exception as err:  # noqa: BLE001 - e.g. a step that no longer calls _attend_rows: no Triton rows
        row = {"n": n, "method": "ssa_decode_triton", "pass": "decode", "ms": None, "extrapolated": False}
        bench.record({**row, "error": f"selection capture / import: {type(err).__name__}: {str(err)[:300]}"})
        sel_args = None
    info = {"calls_per_timing": iters}
    if sel_args is not None:
        info["listed_blocks"] = round((sel_args[3] >= 0).sum(-1).float().mean().item(), 1)
    bench.run(n, "ssa_decode_reference", "decode", lambda: step, **info, **run)
    if sel_args is not None:
        try:
            got = decode_attention_triton(*sel_args)
            rel = {"rel_err_vs_reference": ((got.double() - want.double()).norm() / want.double().norm()).item()}
        except Exception as err:  # noqa: BLE001 - bench.run records the same failure
            rel = {"check_error": f"{type(err).__name__}: {str(err)[:200]}"}
        tri = {"selection": "given (excluded)", **rel, **info}
        bench.run(n, "ssa_decode_triton", "decode", lambda: lambda: decode_attention_triton(*sel_args), **tri, **run)
        if bench.cuda:  # the kernel alone replayed from a CUDA graph: without Python's launch overhead
            tri = {"selection": "given (excluded)", "cuda_graph": True, **info}
            bench.run(
                n,
                "ssa_decode_triton_graph",
                "decode",
                lambda: graphed(lambda: decode_attention_triton(*sel_args)),
                **tri,
                **run,
            )
        tri = {"selection": "reference (included)", **info}
        triton_cfg = dataclasses.replace(cfg, backend="triton")  # ssa_decode_step's own dispatch to the kernel
        bench.run(n, "ssa_decode_triton_step", "decode", lambda: lambda: step(step_cfg=triton_cfg), **tri, **run)

    if bench.cuda:
        decode_fast(bench, s, n, q, k, v, want if sel_args is not None else None, sel_args, run)

    # Dense: the G heads of a kv head are G query rows over all n keys (no mask: every key is <= n - 1).
    from torch.nn.attention import SDPBackend, sdpa_kernel

    qd = q_new.reshape(1, s.hkv, -1, s.d)  # (1, Hkv, G, D)
    kinds = [("dense_decode_fa2", SDPBackend.FLASH_ATTENTION)]
    if "cudnn_sdpa" in s.dense:
        kinds.append(("dense_decode_cudnn", SDPBackend.CUDNN_ATTENTION))
    for kind, backend in kinds:

        def dense_call(backend=backend):
            with torch.no_grad(), sdpa_kernel(backend):
                return F.scaled_dot_product_attention(qd, k, v, scale=scale)

        bench.run(n, kind, "decode", lambda call=dense_call: call, exponent=1.0, cap_s=s.args.cap_s, iters=iters)
        if bench.cuda:  # replayed from a CUDA graph, as the SSA graph rows: the faster dense figure counts
            bench.run(
                n,
                f"{kind}_graph",
                "decode",
                lambda call=dense_call: graphed(call),
                cuda_graph=True,
                exponent=1.0,
                cap_s=s.args.cap_s,
                iters=iters,
            )


def decode_fast(bench: Bench, s: Setup, n: int, q, k, v, want, sel_args, run: dict[str, Any]) -> None:
    """The full fast SSA step (``ssa_kernels.decode.fast``: state update + Triton selection + Triton attention)
    from Python and replayed from a CUDA graph. Every call decodes the next real token: the state is built from
    the first n - m tokens and the calls decode tokens n - m .. n - 1 (the caches already hold them; the step
    writes the same values again), so the timings include block completions like any decode. Checked first on
    token n - 1 against the reference step (``want``, its selection ``sel_args[3]``)."""
    from ssa_kernels.decode.fast import DecodePyramid, SSADecodeGraph, fast_decode_step

    cfg, scale = s.cfg, s.d**-0.5
    calls = (s.args.warmup + max(1, s.args.reps)) * run["iters"] + 8  # tokens the timed calls take
    info: dict[str, Any] = {"calls_per_timing": run["iters"], "selection": "fast (included)", "state_update": True}
    try:
        with torch.no_grad():
            check = DecodePyramid.from_prefill(q[:, :, : n - 1], k[:, :, : n - 1], cfg, capacity=n)
            got = fast_decode_step(q[:, :, n - 1 :], k[:, :, n - 1], v[:, :, n - 1], k, v, check, cfg, scale)
        if want is not None:
            info["rel_err_vs_reference"] = ((got.double() - want.double()).norm() / want.double().norm()).item()
            info["same_selection_as_reference"] = bool(torch.equal(check.indices, sel_args[3]))
        del check
    except Exception as err:  # noqa: BLE001 - bench.run records the same failure below
        info["check_error"] = f"{type(err).__name__}: {str(err)[:300]}"

    def fresh() -> DecodePyramid:
        with torch.no_grad():
            return DecodePyramid.from_prefill(q[:, :, : n - calls], k[:, :, : n - calls], cfg, capacity=n)

    def python_step():
        state, t = fresh(), [n - calls]

        def call():
            i = t[0]
            t[0] += 1
            return fast_decode_step(q[:, :, i : i + 1], k[:, :, i], v[:, :, i], k, v, state, cfg, scale)

        return call

    def graph_step():
        state, t = fresh(), [n - calls]
        graph = SSADecodeGraph(state, k, v, cfg, q_heads=s.hq, scale=scale)

        def call():
            i = t[0]
            t[0] += 1
            return graph(q[:, :, i : i + 1], k[:, :, i], v[:, :, i])

        return call

    bench.run(n, "ssa_decode_fast_step", "decode", python_step, **info, **run)
    bench.run(n, "ssa_decode_fast_graph", "decode", graph_step, cuda_graph=True, **info, **run)
    decode_graph_steps(bench, s, n, q, k, v, fresh, n - calls, info)


def replay_ms(graph: torch.cuda.CUDAGraph, restore: Callable[[], Any], reps: int) -> float:
    """Median ms of one replay of ``graph`` over ``reps`` replays, ``restore()`` (untimed) before each."""
    times = []
    for _ in range(reps):
        restore()
        torch.cuda.synchronize()
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        graph.replay()
        e1.record()
        torch.cuda.synchronize()
        times.append(e0.elapsed_time(e1))
    return sorted(times)[len(times) // 2]


def decode_graph_steps(bench: Bench, s: Setup, n: int, q, k, v, fresh, first: int, info: dict[str, Any]) -> None:
    """K consecutive decode steps (tokens first .. first + K - 1) captured in ONE CUDA graph, as a graphed
    model's decode loop runs them: each step reads its token's q, k, v where they lie (no copies into
    static buffers), ms per step = replay / K, the state restored from a snapshot between replays (not
    timed). Also the step's parts the same way (state update, selection, attention), so the split shows."""
    from ssa_kernels.decode.fast import decode_select, decode_update, fast_decode_step
    from ssa_kernels.decode.triton import decode_attention_triton

    cfg, scale, steps = s.cfg, s.d**-0.5, 16
    state = fresh()
    snap = state.clone()
    bt = q.shape[0]
    parts = {
        "ssa_decode_fast_graph_k": lambda i: fast_decode_step(
            q[:, :, i : i + 1], k[:, :, i], v[:, :, i], k, v, state, cfg, scale
        ),
        "ssa_decode_part_update": lambda i: decode_update(
            state, q[:, :, i], k[:, :, i], cfg, kv=(k[:, :, i], v[:, :, i], k, v)
        ),
        "ssa_decode_part_select": lambda i: decode_select(state, cfg),
        "ssa_decode_part_attention": lambda i: decode_attention_triton(
            q[:, :, i : i + 1], k, v, state.indices, state.pos, state.doc_start.view(bt, 1), cfg.block_size, scale
        ),
    }

    def graph_ms(step, update_first: bool) -> float:
        """ms per step: the K steps in one graph, replayed from the same state (restore not timed)."""
        start = []  # the state the replays start from, as reset() leaves it before the capture

        def reset() -> None:
            state.copy_(snap)
            if update_first:  # selection / attention alone: of a taken token
                decode_update(state, q[:, :, first], k[:, :, first], cfg, kv=(k[:, :, first], v[:, :, first], k, v))
            start[:] = [state.clone()]

        with torch.no_grad():
            state.copy_(snap)
            fast_decode_step(q[:, :, first : first + 1], k[:, :, first], v[:, :, first], k, v, state, cfg, scale)
            graph = capture(lambda j: step(first + j), steps, reset)
        return replay_ms(graph, lambda: state.copy_(start[0]), max(3, s.args.reps)) / steps

    def record(method: str, step, update_first: bool, **extra) -> None:
        row = {"n": n, "method": method, "pass": "decode", "ms": None, "extrapolated": False}
        try:
            row["ms"] = graph_ms(step, update_first)
            row.update({"cuda_graph": True, "steps_per_graph": steps, **extra})
        except Exception as err:  # noqa: BLE001
            row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
        bench.record(row)

    from ssa_kernels.decode import fast as decode_fast_mod

    main = {k_: v_ for k_, v_ in info.items() if k_ != "calls_per_timing"}
    tuning = dataclasses.asdict(decode_fast_mod.SELECT_TUNING)
    for method, step in parts.items():
        extra = {**main, "select_tuning": tuning} if method == "ssa_decode_fast_graph_k" else {}
        record(method, step, update_first=method not in ("ssa_decode_fast_graph_k", "ssa_decode_part_update"), **extra)
    default = decode_fast_mod.SELECT_TUNING
    for spec in s.args.decode_select_sweep or []:  # rows,warps,chunk
        r_, w_, c_ = (int(x) for x in spec.split(","))
        decode_fast_mod.SELECT_TUNING = dataclasses.replace(default, rows=r_, num_warps=w_, dim_chunk=c_)
        record(f"sweep_select_{spec}", parts["ssa_decode_part_select"], True, select_tuning=spec)
        record(f"sweep_step_{spec}", parts["ssa_decode_fast_graph_k"], False, select_tuning=spec)
    decode_fast_mod.SELECT_TUNING = default


# ------------------------------------------------------------------------------------------ reporting


def lookup(results, method: str, pass_: str, n: int) -> dict[str, Any] | None:
    for r in results:
        if r["method"] == method and r["pass"] == pass_ and r["n"] == n and r["ms"] is not None:
            return r
    return None


def best(results, prefix: str, pass_: str, n: int) -> dict[str, Any] | None:
    rows = [r for r in results if r["method"].startswith(prefix) and r["pass"] == pass_ and r["n"] == n]
    rows = [r for r in rows if r["ms"] is not None]
    return min(rows, key=lambda r: (r["extrapolated"], r["ms"])) if rows else None


def ratios(results) -> dict[str, Any]:
    """SSA against FA2 (SDPA flash) and Flex per n and pass (their ms / SSA's ms: > 1 means SSA is faster),
    the selector's share of the SSA forward, SSA's ms per token growth 128K -> 1M, and decode speedups."""
    out: dict[str, Any] = {"speedup": [], "selector_share": [], "ms_per_token_growth_128k_1m": {}, "decode": []}
    ns = sorted({r["n"] for r in results})
    print("\nratios (other / SSA: > 1 means SSA is faster; * = involves an extrapolated time)")
    for n in ns:
        for pass_ in ("fwd", "fwdbwd"):
            ssa = lookup(results, "ssa", pass_, n)
            if ssa is None:
                continue
            row = {"n": n, "pass": pass_}
            for name, other in (
                ("fa2", lookup(results, "fa2_sdpa", pass_, n)),
                ("flex", best(results, "flex", pass_, n)),
            ):
                if other is not None:
                    row[f"vs_{name}"] = other["ms"] / ssa["ms"]
                    row[f"vs_{name}_extrapolated"] = bool(other["extrapolated"] or ssa["extrapolated"])
            out["speedup"].append(row)
            text = "  ".join(
                f"vs {name} {row[f'vs_{name}']:8.2f}x{'*' if row[f'vs_{name}_extrapolated'] else ' '}"
                for name in ("fa2", "flex")
                if f"vs_{name}" in row
            )
            print(f"  n={n:>8} {pass_:<7} {text}")
        sel, fwd = lookup(results, "ssa_selector", "selector", n), lookup(results, "ssa", "fwd", n)
        if sel is not None and fwd is not None:
            share = sel["ms"] / fwd["ms"]
            out["selector_share"].append(
                {"n": n, "share": share, "extrapolated": sel["extrapolated"] or fwd["extrapolated"]}
            )
            print(f"  n={n:>8} selector / SSA fwd = {share:.1%}")
    for pass_ in ("fwd", "fwdbwd"):
        a, b = lookup(results, "ssa", pass_, 128 * KI), lookup(results, "ssa", pass_, MI)
        if a is not None and b is not None:
            growth = (b["ms"] / MI) / (a["ms"] / (128 * KI))
            out["ms_per_token_growth_128k_1m"][pass_] = growth
            print(
                f"  SSA {pass_} ms/token 1M vs 128K: {growth:.2f}x{'*' if a['extrapolated'] or b['extrapolated'] else ''}"
            )
    for n in sorted({r["n"] for r in results if r["pass"] == "decode"}):
        dense = best(results, "dense_decode", "decode", n)
        if dense is None:
            continue
        for method in (
            "ssa_decode_fast_graph_k",
            "ssa_decode_fast_graph",
            "ssa_decode_fast_step",
            "ssa_decode_triton",
            "ssa_decode_triton_graph",
            "ssa_decode_triton_step",
            "ssa_decode_reference",
        ):
            r = lookup(results, method, "decode", n)
            if r is not None:
                out["decode"].append(
                    {"n": n, "method": method, "dense": dense["method"], "speedup": dense["ms"] / r["ms"]}
                )
                print(f"  decode n={n:>8} {method:<24} {dense['ms'] / r['ms']:8.2f}x vs {dense['method']}")
    return out


def fmt_n(n: int) -> str:
    return f"{n // MI}M" if n % MI == 0 else f"{n // KI}K" if n % KI == 0 else str(n)


def print_table(results) -> None:
    methods = sorted({(r["pass"], r["method"]) for r in results})
    ns = sorted({r["n"] for r in results})
    print("\n" + f"{'pass':<9}{'method':<24}" + "".join(f"{fmt_n(n):>11}" for n in ns))
    for pass_, method in methods:
        cells = []
        for n in ns:
            r = next((r for r in results if r["method"] == method and r["pass"] == pass_ and r["n"] == n), None)
            if r is None:
                cells.append(f"{'':>11}")
            elif r["ms"] is None:
                cells.append(f"{'err':>11}")
            else:
                cells.append(f"{r['ms']:>10.2f}{'~' if r['extrapolated'] else ' '}")
        print(f"{pass_:<9}{method:<24}" + "".join(cells))
    print("ms per call; ~ extrapolated")


def plot(results, path: Path, device: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot")
        return
    panels = [("fwd", ("fwd", "selector")), ("fwd + bwd", ("fwdbwd",)), ("decode (1 token)", ("decode",))]
    panels = [(t, ps) for t, ps in panels if any(r["pass"] in ps and r["ms"] for r in results)]  # a run may skip one
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5.5), squeeze=False)
    axes = axes[0]
    for ax, (title, passes) in zip(axes, panels):
        for pass_, method in sorted({(r["pass"], r["method"]) for r in results if r["pass"] in passes}):
            rows = sorted(
                (r for r in results if r["method"] == method and r["pass"] == pass_ and r["ms"]), key=lambda r: r["n"]
            )
            if not rows:
                continue
            label = method if pass_ != "selector" else "ssa_selector"
            line = ax.plot([r["n"] for r in rows], [r["ms"] for r in rows], "-", label=label)[0]
            meas = [r for r in rows if not r["extrapolated"]]
            extra = [r for r in rows if r["extrapolated"]]
            ax.plot([r["n"] for r in meas], [r["ms"] for r in meas], "o", color=line.get_color())
            ax.plot([r["n"] for r in extra], [r["ms"] for r in extra], "o", mfc="none", color=line.get_color())
        ax.set(xscale="log", yscale="log", xlabel="n (tokens)", ylabel="ms", title=title)
        ax.set_xscale("log", base=2)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"attention, one layer, {device} (hollow: extrapolated)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
