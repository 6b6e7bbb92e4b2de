"""Check and time the Triton SSA block-sparse attention (``ssa_kernels/attention/triton.py``) on one GPU.

    PYTHONPATH=. python3 scripts/bench_attention_kernel.py [--check] [--sizes 131072,1048576] [--sweep fwd,dq,dkdv]

--check: bf16 kernel vs the fp32 reference at small T (ragged, docs, block bias, small CSR pieces), relative
errors of out, lse and every gradient. --sizes: times forward, fwd+bwd and the backward's parts on the
synthetic SSA selection (per query block: sink block 0, the 16 local blocks, 112 random distinct earlier
blocks; sorted, -1 padded for early rows) at Bt=1, Hq=32, Hkv=8, D=128, B=64, bf16; --block-size 128 keeps
the token budget (sink block, 8 local blocks, 56 routed). --sweep: times each listed kernel's configurations
(BLOCK_M, num_warps, num_stages[, TMA[, BLOCK_N[, KT]]]) at --sweep-T. --config: a CONFIG_OVERRIDE
for the --sizes timings (e.g. "fwd:TMA=0 dq:TMA=0,num_stages=2 dkdv:TMA=0", the pointer-load baseline);
--check-override: a second --check with such an override.

FLOPs: forward 4 * D * sum over (query head, query row) of visible keys; fwd+bwd 3.5x that (the backward
counted as 2.5x the forward, FlashAttention's convention; the kernels actually recompute QK^T and dP^T in
both backward passes, 3.5x the forward's matmuls in the backward alone).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

import torch


def _load(name: str, rel: str):
    """Load one file as a module without running ssa_kernels/__init__.py (which imports the whole package,
    HF glue included; this script needs only the two attention files)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


tri = _load("ssa_attention_triton", "ssa_kernels/attention/triton.py")
sparse_attention = _load("ssa_attention_reference", "ssa_kernels/attention/reference.py").sparse_attention

T0 = time.time()
BUDGET_S = float(os.environ.get("BENCH_BUDGET_S", "160"))


def log(*a) -> None:
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


def synthetic_indices(
    hkv: int, nb: int, gen: torch.Generator, n_routed: int = 112, n_local: int = 16, dev: str = "cuda"
) -> torch.Tensor:
    """[1, hkv, nb, 1 + n_routed + n_local] int64, built with torch ops on dev without any nb x nb tensor."""
    i = torch.arange(nb, device=dev)
    local = i[:, None] - torch.arange(n_local - 1, -1, -1, device=dev)[None, :]  # [nb, 16]: i-15 .. i
    local = torch.where(local >= 0, local, -1).expand(hkv, nb, n_local)  # [hkv, nb, 16]
    sink = torch.where(i >= n_local, 0, -1).view(1, nb, 1).expand(hkv, nb, 1)  # [hkv, nb, 1]
    # Routed: distinct blocks from [1, i - n_local], R = max(0, i - n_local) candidates per row.
    R = (i - n_local).clamp_min(0)  # [nb]
    routed = torch.full((hkv, nb, n_routed), -1, dtype=torch.int64, device=dev)
    small = R <= 512  # exact: the n_routed smallest of 512 random keys, positions >= R excluded
    ns = int(small.sum())
    keys = torch.rand(hkv, ns, 512, device=dev, generator=gen)  # [hkv, ns, 512]
    pos = torch.arange(512, device=dev)
    keys = torch.where(pos[None, None, :] < R[small][None, :, None], keys, 2.0)
    kv, kj = keys.topk(n_routed, dim=-1, largest=False)  # [hkv, ns, n_routed]
    routed[:, small] = torch.where(kv < 2.0, kj + 1, -1)
    nl = nb - ns  # large rows: 256 draws, duplicates dropped, n_routed of the distinct ones kept
    if nl:
        Rl = R[~small].view(1, nl, 1).float()
        draws = (torch.rand(hkv, nl, 256, device=dev, generator=gen) * Rl).long().clamp_max(Rl.long() - 1)
        draws, _ = draws.sort(-1)  # [hkv, nl, 256]
        dup = torch.zeros_like(draws, dtype=torch.bool)
        dup[..., 1:] = draws[..., 1:] == draws[..., :-1]
        prio = torch.where(dup, -1.0, torch.rand(draws.shape, device=dev, generator=gen))
        pv, pj = prio.topk(n_routed, dim=-1)  # [hkv, nl, n_routed]
        routed[:, ~small] = torch.where(pv >= 0, draws.gather(-1, pj) + 1, -1)
    rows = torch.cat([sink, routed, local], -1)  # [hkv, nb, S]
    big = torch.iinfo(torch.int64).max
    rows, _ = torch.where(rows >= 0, rows, big).sort(-1)
    rows = torch.where(rows == big, -1, rows)
    return rows.unsqueeze(0).contiguous()  # [1, hkv, nb, S]


def fwd_flops(indices: torch.Tensor, G: int, B: int, D: int) -> float:
    """4 * D * G * sum over (kv head, query row) of visible keys; T a multiple of B, diagonal always listed."""
    cnt = (indices >= 0).sum(-1).double()  # [1, hkv, nb]
    per_block = (cnt - 1) * B * B + B * (B + 1) / 2
    return float(4 * D * G * per_block.sum())


def timeit(fn, reps: int, warmup: int = 1) -> float:
    """Median ms over reps (events), after warmup calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2]


RELERR_SLICE = 1 << 26  # elements per fp64 slice of relerr


def relerr(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in fp64, a slice at a time (a 1M-token output in fp64 is 32 GiB)."""
    a, b = a.flatten(), b.flatten()
    num = den = 0.0
    for i in range(0, a.numel(), RELERR_SLICE):
        x, y = a[i : i + RELERR_SLICE].double(), b[i : i + RELERR_SLICE].double()
        num += (x - y).square().sum().item()
        den += y.square().sum().item()
    return (num / max(den, 1e-300)) ** 0.5


def check(override: dict | None = None) -> float:
    """bf16 kernel vs fp32 reference; returns the max relative error over out, lse and grads. override: a
    CONFIG_OVERRIDE for the checked kernels (e.g. the TMA variants)."""
    tri.CONFIG_OVERRIDE.clear()
    tri.CONFIG_OVERRIDE.update(override or {})
    log(f"check with CONFIG_OVERRIDE {tri.CONFIG_OVERRIDE}")
    g = torch.Generator(device="cuda").manual_seed(0)
    worst = 0.0
    tri.POISON = True
    # Few kernel specialisations (compiles are slow): docs + bias everywhere, T not a multiple of 16.
    gluon_calls = []  # the Gluon forward serves only calls without documents (tri._gluon.supported)
    real_gluon = tri._gluon.forward
    tri._gluon.forward = lambda *a, **kw: gluon_calls.append(1) or real_gluon(*a, **kw)
    for bt, hq, hkv, t, d, bs, docs_on, split in [
        (2, 8, 2, 3000, 128, 64, False, 3),
        (1, 32, 8, 8100, 128, 64, False, None),
        (2, 8, 2, 3000, 128, 64, True, 3),
        (1, 32, 8, 8100, 128, 64, True, None),
        (1, 4, 4, 1500, 64, 64, True, 2),
        (1, 32, 8, 8100, 128, 128, True, None),
    ]:
        nb = -(-t // bs)
        idx = synthetic_indices(hkv, nb, g, n_routed=min(112, nb), n_local=4)[:, :, :, :]
        idx = idx.expand(bt, -1, -1, -1).contiguous()
        q = torch.randn(bt, hq, t, d, device="cuda", generator=g, dtype=torch.bfloat16)
        k = torch.randn(bt, hkv, t, d, device="cuda", generator=g, dtype=torch.bfloat16)
        v = torch.randn(bt, hkv, t, d, device="cuda", generator=g, dtype=torch.bfloat16)
        bias = 0.3 * torch.randn(idx.shape, device="cuda", generator=g)
        doc = None
        if docs_on:
            doc = (torch.rand(bt, t, device="cuda", generator=g) < 3e-3).long().cumsum(1)
        do = torch.randn(q.shape, device="cuda", generator=g, dtype=torch.bfloat16)
        dl = torch.randn(q.shape[:3], device="cuda", generator=g)
        leaves = [x.clone().requires_grad_() for x in (q, k, v, bias)]
        out, lse = tri._sparse_attention_triton(*leaves[:3], idx, bs, doc_ids=doc, block_bias=leaves[3], kv_split=split)
        grads = torch.autograd.grad((out.float() * do.float()).sum() + (lse * dl).sum(), leaves)
        rl = [x.detach().float().requires_grad_() for x in (q, k, v, bias)]
        ro, rlse = sparse_attention(*rl[:3], idx, bs, doc_ids=doc, block_bias=rl[3])
        rg = torch.autograd.grad((ro * do.float()).sum() + (rlse * dl).sum(), rl)
        fin = torch.isfinite(rlse)
        errs = {"out": relerr(out, ro), "lse": relerr(lse[fin], rlse[fin])}
        errs.update({n: relerr(a, b) for n, a, b in zip(("dq", "dk", "dv", "dbias"), grads, rg)})
        bad = [n for n, x in zip(("out", "dq", "dk", "dv", "dbias"), (out, *grads)) if not torch.isfinite(x).all()]
        bad += [] if torch.equal(torch.isinf(lse), ~fin) else ["lse-inf-pattern"]
        worst = max(worst, *errs.values())
        log(f"check Bt{bt} Hq{hq} Hkv{hkv} T{t} D{d} B{bs} docs={docs_on} split={split}:",
            " ".join(f"{n}={e:.2e}" for n, e in errs.items()), "NONFINITE:" + ",".join(bad) if bad else "")  # fmt: skip
    tri.POISON = False
    tri.CONFIG_OVERRIDE.clear()
    tri._gluon.forward = real_gluon
    log(f"check: Gluon forward calls {len(gluon_calls)}")
    log(f"check: max rel err {worst:.2e} ({'OK' if worst <= 1e-2 else 'FAIL'})")
    return worst


BS = 64  # --block-size: key/query block of the synthetic selection (the budget stays ~8.2K tokens per query)
LAYOUT = "bhtd"  # --layout: "bhtd" contiguous [Bt, H, T, D]; "hf" [Bt, T, H, D] storage seen transposed (HF)


def setup(T: int, hq=32, hkv=8, d=128, seed=1):
    bs = BS
    g = torch.Generator(device="cuda").manual_seed(seed)
    nb = T // bs
    idx = synthetic_indices(hkv, nb, g, n_routed=112 * 64 // bs, n_local=1024 // bs)

    def make(h):
        if LAYOUT == "hf":
            x = torch.randn(1, T, h, d, device="cuda", dtype=torch.bfloat16, generator=g).transpose(1, 2)
        else:
            x = torch.randn(1, h, T, d, device="cuda", dtype=torch.bfloat16, generator=g)
        return x.requires_grad_()

    q, k, v = make(hq), make(hkv), make(hkv)
    return q, k, v, idx, fwd_flops(idx, hq // hkv, bs, d)


def bench_size(T: int, reps: int, fwd_only: bool = False) -> None:
    bs, scale = BS, 128**-0.5
    q, k, v, idx, fl = setup(T)  # q, k, v require grad
    log(
        f"T={T}: S={idx.shape[-1]}, mean listed {float((idx >= 0).sum(-1).float().mean()):.1f}, fwd GFLOP {fl / 1e9:.0f}"
    )
    with torch.no_grad():
        f_ms = timeit(lambda: tri.sparse_attention_triton(q, k, v, idx, bs), reps)
    log(f"T={T} fwd      {f_ms:8.1f} ms  {fl / f_ms / 1e9:6.0f} TFLOP/s")
    if fwd_only or time.time() - T0 > BUDGET_S:
        return
    do = torch.randn_like(q)

    def fb():
        out, _ = tri.sparse_attention_triton(q, k, v, idx, bs)
        q.grad = k.grad = v.grad = None
        out.backward(do)

    fb()
    torch.cuda.synchronize()
    q.grad = k.grad = v.grad = None
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()  # q, k, v, dO, indices
    fb_ms = timeit(fb, reps, warmup=0)
    # Peak beyond q, k, v, dO and the unavoidable out, dq, dk, dv (bf16): the kernels' own workspace.
    own = 2 * (q.numel() + k.numel() + v.numel() + q.numel())
    extra = torch.cuda.max_memory_allocated() - base - own
    ref = 2 * 2 * (q.numel() + k.numel() + v.numel() + q.numel())  # q, k, v, o and their grads, bf16
    log(f"T={T} fwd+bwd  {fb_ms:8.1f} ms  {3.5 * fl / fb_ms / 1e9:6.0f} TFLOP/s (3.5x fwd FLOPs);"
        f" extra memory {extra / 2**30:.2f} GiB = {100 * extra / ref:.1f}% of q,k,v,o+grads")  # fmt: skip
    # Parts of the backward (dq alone, dk/dv alone: two launches; all: the fused launch).
    with torch.no_grad():
        out, lse = tri.sparse_attention_triton(q, k, v, idx, bs)
        cnt, n_lo = tri._row_counts(idx)
        args = (q, k, v, out, lse, idx, cnt, n_lo, None, None, do, None, bs, scale, None)
        dq_ms = timeit(lambda: tri._backward(*args, (True, False, False, False)), reps)
        kv_ms = timeit(lambda: tri._backward(*args, (False, True, True, False)), reps)
        all_ms = timeit(lambda: tri._backward(*args, (True, True, True, False)), reps)
        csr_ms = timeit(lambda: tri._kv_work(idx, None), reps)
    _, items, red, n_slots = tri._kv_work(idx, None)
    log(
        f"T={T} bwd parts: delta+dq {dq_ms:.1f} ms ({1.5 * fl / dq_ms / 1e9:.0f} TFLOP/s of 3 matmuls),"
        f" delta+csr+dkdv {kv_ms:.1f} ms ({2 * fl / kv_ms / 1e9:.0f} TFLOP/s of 4 matmuls), csr {csr_ms:.1f} ms,"
        f" whole backward {all_ms:.1f} ms"
        f" ({3.5 * fl / all_ms / 1e9:.0f} TFLOP/s of 7 matmuls); items {items.shape[0]}, split blocks"
        f" {red.shape[0]}, partial slots {n_slots}, longest {int((items[:, 3] - items[:, 1]).max())}"
    )


def _bwd_args(T: int) -> tuple[tuple, float]:
    """Inputs of ``tri._backward`` at T (q, k, v, the forward's out and lse, a random dO) and the forward's FLOPs."""
    q, k, v, idx, fl = setup(T)
    q, k, v = q.detach(), k.detach(), v.detach()
    do = torch.randn_like(q)
    with torch.no_grad():
        out, lse = tri.sparse_attention_triton(q, k, v, idx, BS)
        cnt, n_lo = tri._row_counts(idx)
    return (q, k, v, out, lse, idx, cnt, n_lo, None, None, do, None, BS, 128**-0.5, None), fl


def _interleaved(name: str, specs: list[str], T: int, reps: int, call, flops: float) -> None:
    """``call`` (returning a tuple of tensors) at T under each CONFIG_OVERRIDE spec ("" = the defaults) in two
    interleaved rounds (drift between variants cancels); prints each variant's best median and the largest relative
    error of its tensors against the first spec's (bf16 rounding: ~1e-3; a broken variant: large or NaN)."""
    best: dict[str, float] = {}
    first = None
    for rnd in range(2):
        for spec in specs:
            tri.CONFIG_OVERRIDE.clear()
            tri.CONFIG_OVERRIDE.update(tri.parse_config_override(spec))
            ms = timeit(call, reps)
            if rnd == 0:
                got = call()
                first = got if first is None else first
                err = max(relerr(a, b) for a, b in zip(got, first))
                log(f"T={T} {name} [{spec or 'defaults'}] vs [{specs[0] or 'defaults'}]: rel err {err:.2e}")
                del got
            best[spec] = min(best.get(spec, ms), ms)
            log(f"T={T} round {rnd} {name} [{spec or 'defaults'}] {ms:8.1f} ms  {flops / ms / 1e9:6.0f} TFLOP/s")
    tri.CONFIG_OVERRIDE.clear()
    for spec, ms in sorted(best.items(), key=lambda x: x[1]):
        log(f"T={T} variant {name} [{spec or 'defaults'}] best {ms:8.1f} ms  {flops / ms / 1e9:6.0f} TFLOP/s")


def fwd_variants(specs: list[str], T: int, reps: int, docs: int = 0) -> None:
    """The forward alone at T under each spec ("fwd:BLOCK_M=128,num_warps=8"), its output compared; with ``docs``
    documents of equal length (the document mask on every listed block; their visible pairs are fewer, but the FLOP/s
    column keeps the maskless count)."""
    q, k, v, idx, fl = setup(T)
    doc = (torch.arange(T, device="cuda") * docs // T).view(1, T) if docs else None
    with torch.no_grad():
        _interleaved(
            "fwd" + (f"-docs{docs}" if docs else ""), specs, T, reps,
            lambda: tri.sparse_attention_triton(q, k, v, idx, BS, doc_ids=doc)[:1], fl,
        )  # fmt: skip


def bwd_variants(specs: list[str], T: int, reps: int) -> None:
    """The whole backward (delta, dQ, CSR, dK/dV) at T under each spec ("dq:BLOCK_M=64,num_warps=4"), dq, dk, dv
    compared; TFLOP/s of its 7 matmuls (3.5x the forward's FLOPs)."""
    args, fl = _bwd_args(T)
    _interleaved("bwd", specs, T, reps, lambda: tri._backward(*args, (True, True, True, False))[:3], 3.5 * fl)


def sweep(specs: list[str], T: int) -> None:
    """specs: "kind:BLOCK_M,num_warps,num_stages[,TMA[,BLOCK_N[,KT]]][:kv_order]" with kind fwd | dq | dkdv."""
    args, fl = _bwd_args(T)
    (q, k, v, _, _, idx, cnt, n_lo), bs, scale = args[:8], BS, args[13]
    reps = 5 if T <= 131072 else 2
    for spec in specs:
        if time.time() - T0 > BUDGET_S:
            log("budget reached, sweep stopped")
            return
        kind, cfg, *order = spec.split(":")
        nums = [int(x) for x in cfg.split(",")]
        tri.CONFIG_OVERRIDE.clear()
        tri.CONFIG_OVERRIDE[kind] = dict(zip(("BLOCK_M", "num_warps", "num_stages", "TMA", "BLOCK_N", "KT"), nums))
        # the sweep's configurations are the Triton kernels': not the Gluon ones that are the defaults on Hopper
        tri.CONFIG_OVERRIDE[kind]["GLUON"] = 0
        tri.KV_ORDER = order[0] if order else "kb"
        try:
            with torch.no_grad():
                if kind == "fwd":
                    ms = timeit(lambda: tri._forward(q, k, v, idx, cnt, n_lo, None, None, bs, scale), reps)
                    tf = fl / ms / 1e9
                elif kind == "dq":
                    ms = timeit(lambda: tri._backward(*args, (True, False, False, False)), reps)
                    tf = 1.5 * fl / ms / 1e9
                else:
                    ms = timeit(lambda: tri._backward(*args, (False, True, True, False)), reps)
                    tf = 2 * fl / ms / 1e9
            log(f"sweep T={T} {spec}: {ms:.2f} ms {tf:.0f} TFLOP/s")
        except Exception as e:  # noqa: BLE001 - out of resources etc.: report and go on
            log(f"sweep {spec}: failed {type(e).__name__}: {str(e)[:200]}")
    tri.CONFIG_OVERRIDE.clear()
    tri.KV_ORDER = "kb"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--config", default="", help="CONFIG_OVERRIDE for --sizes, same syntax as --check-override")
    ap.add_argument("--check-override", default="", help='also check with e.g. "fwd:TMA=1 dkdv:TMA=1,BLOCK_M=64"')
    ap.add_argument("--sizes", default="131072,1048576")
    ap.add_argument("--sweep", default="", help='e.g. "fwd:256,8,2 dkdv:128,8,2:lpt"')
    ap.add_argument("--sweep-T", type=int, default=131072)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--fwd-only", action="store_true", help="--sizes: time the forward alone")
    ap.add_argument(
        "--fwd-variants",
        default="",
        help='forward alone at --sweep-T under each ";"-separated override, e.g. "; fwd:num_stages=3"',
    )
    ap.add_argument(
        "--bwd-variants",
        default="",
        help='whole backward at --sweep-T under each ";"-separated override, e.g. "; dq:BLOCK_M=64,num_warps=4"',
    )
    ap.add_argument("--docs", type=int, default=0, help="--fwd-variants: this many equal documents (mask on)")
    ap.add_argument("--layout", choices=("bhtd", "hf"), default="bhtd", help="q/k/v memory layout of --sizes")
    ap.add_argument("--block-size", type=int, default=64, choices=(64, 128), help="SSA block of --sizes/--sweep")
    a = ap.parse_args()
    global LAYOUT, BS
    LAYOUT, BS = a.layout, a.block_size
    log(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", tri.triton.__version__)
    if a.check:
        check()
    if a.check_override:
        check(tri.parse_config_override(a.check_override))
    tri.CONFIG_OVERRIDE.update(tri.parse_config_override(a.config))
    if a.config:
        log(f"timing with CONFIG_OVERRIDE {tri.CONFIG_OVERRIDE}")
    for T in [int(x) for x in a.sizes.split(",") if x]:
        if time.time() - T0 > BUDGET_S:
            log(f"budget reached, T={T} skipped")
            break
        bench_size(T, a.reps if T <= 131072 else max(1, a.reps - 1), a.fwd_only)
        torch.cuda.empty_cache()
    if a.fwd_variants:
        fwd_variants([x.strip() for x in a.fwd_variants.split(";")], a.sweep_T, a.reps, a.docs)
    if a.bwd_variants:
        bwd_variants([x.strip() for x in a.bwd_variants.split(";")], a.sweep_T, a.reps)
    if a.sweep:
        sweep(a.sweep.split(), a.sweep_T)


if __name__ == "__main__":
    sys.exit(main())
