"""Static report of an SSA attention kernel compiled for Hopper (sm_90a) on any machine, GPU or not: registers,
spills and the instruction mix of its main loops, per CONFIG_OVERRIDE variant.

    python3 scripts/kernel_sass.py [--kernel fwd|dq|dkdv] --variants "; fwd:num_stages=3" [--block-size 64] [--json F]
    python3 scripts/kernel_sass.py --kernel select --scores bound/bound --variants "; select:bound_edges_apart=0"
    python3 scripts/kernel_sass.py --kernel gfwd --variants "; fwd:STAGES=3"   # the Gluon kernels: gfwd, gdq, gdkdv

Why: device time is scarce, and the forward's speed at 1M tracks what one iteration of its loop issues (the
nineteenth session's analysis in docs/kernels.md: ~640 SASS instructions per 256 x 64 tile against ~2,050 clocks of
tensor-core work, with one program per SM). Triton compiles to PTX and cubin without a GPU (``triton.compile`` with a
GPUTarget); ptxas -v reports registers and spills, cuobjdump -sass the instructions. Compile with the device image's
Triton for figures that match it: ``pip install --target /tmp/t36 --no-deps triton==3.6.0`` and run with
``PYTHONPATH=/tmp/t36``. Launch-time specialisation is reproduced for what the benchmark's tensors have: pointers
and the strides / lengths that are multiples of 16 are marked divisible by 16; no bias, no documents, dQ wanted.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script without an install

import ssa_kernels.attention.triton as tri  # noqa: E402

BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
# Runtime arguments by name (bf16 q / k / v / dO as in bench_attention.py; no bias, no documents); the rest are ints
PTR_TYPES = {"q": "*bf16", "k": "*bf16", "v": "*bf16", "o": "*bf16", "do": "*bf16", "dq": "*bf16", "dk": "*bf16",
             "dv": "*bf16", "lse": "*fp32", "delta": "*fp32", "dkp": "*fp32", "dvp": "*fp32", "dbias": "*fp32",
             "idx": "*i64", "items": "*i64", "csr": "*i64", "cnt": "*i32", "nlo": "*i32", "bias": "*i32",
             "doc": "*i32"}  # fmt: skip
# Integer arguments the benchmark's shapes make multiples of 16 (specialised at launch as divisible by 16)
DIV16 = {"T", "nb"}
KERNELS = {"fwd": "_fwd_kernel", "dq": "_dq_kernel", "dkdv": "_dkdv_kernel"}


def compile_kernel(kind: str, override: dict, block: int = 64, d: int = 128, g: int = 4):
    """The ``kind`` kernel (fwd | dq | dkdv) compiled for sm_90a under ``override`` (as tri.CONFIG_OVERRIDE), with
    the constexprs the benchmark's call gives it: (compiled, launch cfg)."""
    tri.CONFIG_OVERRIDE.clear()
    tri.CONFIG_OVERRIDE.update(override)
    try:
        cfg = tri._config(kind, g, block, d, torch.device("cuda"))
    finally:
        tri.CONFIG_OVERRIDE.clear()
    fn = getattr(tri, KERNELS[kind])
    names = [p.name for p in fn.params]
    const_names = {p.name for p in fn.params if p.is_constexpr}
    rows = cfg["BLOCK_M"] if kind == "dkdv" else cfg["BLOCK_N"]  # TMA box: q / dO rows (dkdv) or K / V rows
    sig = {}
    for n in names:
        if n in const_names:
            sig[n] = "constexpr"
        elif n.endswith("_ptr"):
            sig[n] = PTR_TYPES[n[:-4]]
        elif n.endswith("_desc"):
            sig[n] = f"tensordesc<bf16[1, 1, {rows}, {d}]>" if cfg["TMA"] else "*bf16"
        elif n in ("qk_scale", "sm_scale"):
            sig[n] = "fp32"
        elif re.fullmatch(r"s(q|k|v|o|do|dq|dk|dv)_[bht]", n):  # strides
            sig[n] = "i64"
        else:
            sig[n] = "i32"
    known = dict(G=g, B=block, D=d, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], HAS_BIAS=False, HAS_DOC=False,
                 TMA=bool(cfg["TMA"]), PREC="tf32", S_P2=256, WANT_DBIAS=False, WANT_DQ=True, KT=bool(cfg["KT"]))  # fmt: skip
    known.update({k: bool(v) for k, v in cfg.items() if k in const_names and k not in known})
    missing = sorted(const_names - known.keys())
    if missing:
        raise SystemExit(f"constexprs of {KERNELS[kind]} this script does not set: {missing}")
    const = {n: known[n] for n in const_names}
    div = [n for n in names if sig[n].startswith("*") or sig[n] == "i64" or n in DIV16]
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in div}
    src = ASTSource(fn=fn, signature=sig, constexprs=const, attrs=attrs)
    opts = {"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts), cfg


def ptxas_info(ptx: str) -> dict:
    """Registers and spill bytes from ptxas -v (the bundled ptxas, or ptxas-blackwell where the PTX is newer)."""
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    for exe in ("ptxas", "ptxas-blackwell"):
        out = subprocess.run([str(BIN / exe), "-v", "--gpu-name=sm_90a", f.name, "-o", os.devnull],
                             capture_output=True, text=True)  # fmt: skip
        text = out.stdout + out.stderr
        regs = re.search(r"Used (\d+) registers", text)
        if out.returncode == 0 and regs:
            st, ld = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text).groups()
            os.unlink(f.name)
            return {"registers": int(regs.group(1)), "spill_store_bytes": int(st), "spill_load_bytes": int(ld)}
    os.unlink(f.name)
    raise RuntimeError(f"ptxas failed: {text[-500:]}")


def sass_loops(cubin: bytes, marker: str = "HGMMA") -> list[dict]:
    """Innermost loops that issue ``marker`` instructions (HGMMA: tensor-core products; LDG: global loads), in code
    order: each loop's opcode counts."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    dump = subprocess.run([str(BIN / "cuobjdump"), "-sass", f.name], capture_output=True, text=True).stdout
    os.unlink(f.name)
    ins = []
    for line in dump.splitlines():
        m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_.]+)(.*)", line)
        if m:
            ins.append((int(m.group(1), 16), m.group(2).split(".")[0], m.group(3)))
    edges = []
    for addr, op, rest in ins:
        target = re.search(r"0x([0-9a-f]+)", rest) if op == "BRA" else None
        if target and int(target.group(1), 16) < addr:
            edges.append((int(target.group(1), 16), addr))
    loops = []
    for lo, hi in edges:
        body = [op for a, op, _ in ins if lo <= a <= hi]
        if marker in body:
            loops.append((lo, hi, collections.Counter(body)))
    inner = [x for x in loops if not any(o[0] >= x[0] and o[1] <= x[1] and o[:2] != x[:2] for o in loops)]
    return [{"start": hex(lo), "instructions": sum(c.values()), "ops": dict(c.most_common())} for lo, hi, c in inner]


def compile_select(spec: str, scores: str):
    """The selector's beam-search kernel (ssa_kernels/selector/fast.py) as launched for the deepest run of query
    blocks at 1M tokens (block 64, beams of 64 at every level: the issue-6 recipe's), scorings ``scores``
    ("node/leaf", e.g. "bound/bound"), Tuning fields from ``spec`` ("select:bound_edges_apart=0")."""
    import dataclasses

    from ssa_kernels import SSAConfig
    from ssa_kernels.selector import fast
    from ssa_kernels.selector.reference import bound_span, needs_bounds

    node, leaf = scores.split("/")
    cfg = SSAConfig(beam_widths=[64], node_score=node, leaf_score=leaf)
    tuning = dataclasses.replace(fast.TUNING, **tri.parse_config_override(spec).get("select", {}))
    nb = (1 << 20) // cfg.block_size
    runs = fast._runs(nb, cfg)
    ma, mb = fast._slots(runs, cfg)
    r0, r1, levels = runs[-1]
    span = bound_span(nb, cfg) if node == "bound" else 1  # the tables' depth, as reference.search_bounds builds
    j = max(1, span.bit_length()) if needs_bounds(cfg) else 1
    shared = fast._shared_constants(cfg, nb, 128, ma, mb, j, tuning, interpreted=False)
    const = {**shared, **fast._run_constants(cfg, levels, (r1 - r0) * 8, shared, tuning, interpreted=False)}
    num_warps = const.pop("num_warps")
    table = "*bf16" if leaf == "bound" and tuning.bound_tables_bf16 else "*fp32"  # bf16 keys: _tables
    fn = fast._select_kernel
    names = [p.name for p in fn.params]
    ptrs = {"qs": "*fp32", "lev": "*fp32", "ps": "*fp32", "scores": "*fp32", "scratch": "*i32", "low": table,
            "high": table}  # fmt: skip
    sig = {n: "constexpr" if n in const else ptrs.get(n[:-4], "*i64") if n.endswith("_ptr") else "i32" for n in names}
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in names if sig[n].startswith("*")}
    src = ASTSource(fn=fn, signature=sig, constexprs=const, attrs=attrs)
    opts = {"num_warps": num_warps, "num_stages": 1}
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts), dataclasses.asdict(tuning)


GLUON = {"gfwd": "_gl_fwd_kernel", "gdq": "_gl_dq_kernel", "gdkdv": "_gl_dkdv_kernel"}


def compile_gluon(kind: str, spec: str, block: int = 64):
    """A warp-specialised Gluon kernel of ``ssa_kernels/attention/gluon.py`` (gfwd | gdq | gdkdv) compiled for sm_90a
    as the benchmark launches it (bf16, D 128, GQA 4, no bias, no documents, the dQ pass's delta fused; block 64 or
    128), its ``STAGES`` / ``PINGPONG``, ``GL_HEADS``, ``GL_KEYS`` from ``spec`` ("fwd:STAGES=3,PINGPONG=1"; the pass
    of the spec is ignored): (compiled, constexprs)."""
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon._runtime import GluonASTSource

    from ssa_kernels.attention import gluon as glk

    fn = getattr(glk, GLUON[kind])
    over = {k: v for kv in tri.parse_config_override(spec).values() for k, v in kv.items()}
    heads = int(over.get("GL_HEADS", 2)) if kind == "gfwd" else 1  # query heads per consumer: in one q box
    q_box = [1, heads, glk.R, 128]

    def desc(box):
        return f"tensordesc<bf16{box},{gl.NVMMASharedLayout.get_default_for(box, gl.bfloat16)!r}>"

    const = {"G": 4, "B": block, "R": glk.R, "D": 128, "STAGES": over.get("STAGES", 4 if kind == "gdkdv" else 2),
             "HAS_BIAS": False, "HAS_DOC": False, "PINGPONG": int(over.get("PINGPONG", 0)),
             "OVERLAP": int(over.get("GL_OVERLAP", 0)), "S_P2": 256, "WANT_DBIAS": False, "WANT_DQ": True,
             "KN": int(over.get("GL_KEYS", glk.R)),
             "HPC": heads, "FUSE_DELTA": True, "HAS_DLSE": False}  # fmt: skip
    sig = {}
    for prm in fn.params:
        n = prm.name
        if prm.is_constexpr:
            sig[n] = "constexpr"
        elif n in ("q_desc", "do_desc", "o_desc"):
            sig[n] = desc(q_box)
        elif n == "st_desc":  # the dK/dV pass's row statistics (gluon.row_stats)
            sig[n] = f"tensordesc<fp32[2, {glk.R}],{glk.ROW_STATS_LAYOUT!r}>"
        elif n.endswith("_desc"):  # K / V: the dQ pass takes BLOCK_N keys a step
            sig[n] = desc([1, 1, const["KN"] if kind in ("gfwd", "gdq") else glk.R, 128])
        elif n in ("o_ptr", "dq_ptr", "dk_ptr", "dv_ptr"):
            sig[n] = "*bf16"
        elif n in ("idx_ptr", "items_ptr", "csr_ptr", "doc_ptr"):
            sig[n] = "*i64"
        elif n in ("cnt_ptr", "nlo_ptr"):
            sig[n] = "*i32"
        elif n.endswith("_ptr"):
            sig[n] = "*fp32"
        elif re.fullmatch(r"s(o|dq|dk|dv)_[bht]", n):
            sig[n] = "i64"
        elif n in ("qk_scale", "sm_scale"):
            sig[n] = "fp32"
        else:
            sig[n] = "i32"
    const = {n: const[n] for n in sig if sig[n] == "constexpr"}
    src = GluonASTSource(fn=fn, signature=sig, constexprs=const)
    # 4 default warps + a 4-warp consumer and the load warp = 12 warps: 168 registers a thread at launch
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "maxnreg": 168}), const


def report(kind: str, spec: str, block: int, scores: str = "bound/bound") -> dict:
    if kind in GLUON:
        compiled, cfg = compile_gluon(kind, spec, block)
        return {"variant": spec or "defaults", "config": cfg, **ptxas_info(compiled.asm["ptx"]),
                "shared_bytes": compiled.metadata.shared, "loops": sass_loops(compiled.asm["cubin"])}  # fmt: skip
    if kind == "select":
        compiled, cfg = compile_select(spec, scores)
        loops = sass_loops(compiled.asm["cubin"], "LDG")
        return {"variant": spec or "defaults", "scores": scores, "config": cfg, **ptxas_info(compiled.asm["ptx"]),
                "loops": loops}  # fmt: skip
    compiled, cfg = compile_kernel(kind, tri.parse_config_override(spec), block)
    loops = sass_loops(compiled.asm["cubin"])
    row = {"variant": spec or "defaults", "config": cfg, **ptxas_info(compiled.asm["ptx"]), "loops": loops}
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default="", help='";"-separated CONFIG_OVERRIDE specs ("" = the defaults)')
    ap.add_argument("--kernel", choices=(*KERNELS, "select", *GLUON), default="fwd")
    ap.add_argument("--scores", default="bound/bound", help="--kernel select: node_score/leaf_score")
    ap.add_argument("--block-size", type=int, default=64, choices=(64, 128))
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    print(f"triton {triton.__version__}, sm_90a, SSA {args.kernel} kernel, block {args.block_size}, D 128, GQA 4, bf16")
    rows = [report(args.kernel, spec.strip(), args.block_size, args.scores) for spec in args.variants.split(";")]
    keys = ("FMUL", "FADD", "FFMA", "FMNMX", "MUFU", "HGMMA", "SHFL", "BAR", "LDL", "STL")
    if args.kernel == "select":
        keys = ("LDG", "FMUL", "FADD", "FFMA", "FMNMX", "IMAD", "IADD3", "PRMT", "LDL", "STL")
    print(f"{'variant':<24} {'regs':>4} {'spill st/ld B':>13}  loop instrs  " + " ".join(f"{k:>5}" for k in keys))
    for r in rows:
        for i, lp in enumerate(r["loops"]):
            name = r["variant"] if i == 0 else ""
            regs = f"{r['registers']:>4} {r['spill_store_bytes']:>6}/{r['spill_load_bytes']:<6}" if i == 0 else " " * 18
            ops = " ".join(f"{lp['ops'].get(k, 0):>5}" for k in keys)
            print(f"{name:<24} {regs}  {lp['start']:>6} {lp['instructions']:>5}  {ops}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"triton": triton.__version__, "kernel": args.kernel, "rows": rows}, indent=1)
        )
    return rows


if __name__ == "__main__":
    main()
