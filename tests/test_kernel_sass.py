"""scripts/kernel_sass.py: the SSA forward kernel compiled for Hopper on this CPU machine (Triton's compiler and its
bundled ptxas / cuobjdump need no GPU). It also keeps the GPU compile path of the forward under CI, which otherwise
runs the kernels only in the interpreter."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def sass_rows(tmp_path, *args: str) -> list[dict]:
    """Rows of ``scripts/kernel_sass.py *args --json`` run as CI would: Triton's compiler, not its interpreter."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")
    out = tmp_path / "sass.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "kernel_sass.py"), *args, "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())["rows"]


def test_forward_compiles_for_hopper_and_its_loop_is_reported(tmp_path):
    rows = sass_rows(tmp_path, "--variants", "; fwd:num_stages=3")
    assert [r["variant"] for r in rows] == ["defaults", "fwd:num_stages=3"]
    for r in rows:
        assert 0 < r["registers"] <= 255 and r["config"]["BLOCK_M"] == 256 and r["config"]["TMA"] == 1
        main = r["loops"][0]["ops"]  # the non-causal loop: one 256 x 64 tile per iteration, 8 warps
        assert main["HGMMA"] == 24  # S = Q K^T (8 k-steps x 2 warpgroups) and P V (4 x 2)
        assert main["MUFU"] >= 64  # 16K exp2 / 256 threads
    assert [r["config"]["num_stages"] for r in rows] == [2, 3]  # the override reached the compiled kernel


def test_backward_kernels_compile_for_hopper(tmp_path):
    """dQ and dK/dV kernels through the same GPU compile path: a loop with tensor-core products and exp2 each."""
    for kernel in ("dq", "dkdv"):
        (row,) = sass_rows(tmp_path, "--kernel", kernel)
        assert 0 < row["registers"] <= 255
        main = row["loops"][0]["ops"]
        assert main["HGMMA"] > 0 and main["MUFU"] >= 32, (kernel, main)  # 64 x 64 (dkdv) / 128 x 64 (dq) tiles


def test_selector_kernel_compiles_for_hopper_and_whole_nodes_apart_issue_fewer(tmp_path):
    """The bound search (issue-6 recipe: both bounds, beams of 64, 1M) through the GPU compile path. Scoring whole
    nodes apart from the partial ones (Tuning.bound_edges_apart, the default) issues far fewer instructions per
    head-dim chunk of the candidate loop than the kernel that gathers both runs for every candidate."""
    apart, both_runs = sass_rows(
        tmp_path, "--kernel", "select", "--scores", "bound/bound", "--variants", "; select:bound_edges_apart=0"
    )
    assert apart["config"]["bound_edges_apart"] and not both_runs["config"]["bound_edges_apart"]
    hot = [max(r["loops"], key=lambda lp: lp["instructions"]) for r in (apart, both_runs)]
    assert hot[0]["ops"]["LDG"] < hot[1]["ops"]["LDG"]  # one run's min / max rows, not two
    assert 1.5 * hot[0]["instructions"] < hot[1]["instructions"], hot


def test_gluon_kernels_compile_for_hopper(tmp_path):
    """The warp-specialised Gluon forward, dQ and dK/dV kernels (``ssa_kernels/attention/gluon.py``) through the GPU
    compile path: Gluon does not run in the interpreter, so this is what CI checks of them (the GPU tests run them).
    Each fits one program an SM (12 warps at 168 registers, shared memory within Hopper's 227 KB) with its consumer
    loop's tensor-core products where the design puts them, and spills at most a few hundred bytes; at 64- and
    128-key blocks (128: two 64-key steps a block; the dQ pass unrolls them into one loop iteration); the dK/dV pass's
    loop over unmasked slices reads no global memory."""
    # per kernel: HGMMA instructions of one 64-key step, spill-store budget in bytes (gdq at 128: Triton 3.6, the GPU
    # image's, spills none; CI's 3.9 20 bytes)
    expect = {"gfwd": (24, 256), "gdq": (20, 64), "gdkdv": (24, 512)}  # 128x64 S + 128x128 PV; S, dP, dq; 4 products
    for block in ("64", "128"):
        for kernel, (hgmma, spill) in expect.items():
            (row,) = sass_rows(tmp_path, "--kernel", kernel, "--block-size", block)
            assert row["config"]["B"] == int(block)
            assert row["registers"] == 168 and row["spill_store_bytes"] <= spill, (kernel, block, row)
            assert 0 < row["shared_bytes"] <= 232448, (kernel, block, row["shared_bytes"])
            per_iter = [lp["ops"]["HGMMA"] for lp in row["loops"] if lp["ops"].get("MUFU", 0) >= 32]
            # one step an iteration; the dQ pass at 128 unrolls a block's two steps into one (and its bias sum)
            steps = {hgmma, 2 * hgmma} if (kernel, block) == ("gdq", "128") else {hgmma}
            assert per_iter and set(per_iter) <= steps and max(per_iter) == max(steps), (kernel, block, per_iter)
            if kernel == "gdkdv":  # lse and delta come by TMA with q and dO: no global load in the unmasked loop
                assert min(lp["ops"].get("LDG", 0) for lp in row["loops"]) == 0, (block, row["loops"])
