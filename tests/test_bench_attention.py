"""scripts/bench_attention.py: its CPU smoke mode end to end (in a subprocess, as CI would run the script), the
JSON it writes, and the FlexAttention BlockMask it builds from SSA's selection."""

import functools
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ssa_kernels import SSAConfig
from ssa_kernels.attention import sparse_attention
from ssa_kernels.selector import select_blocks

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "bench_attention.py"
PASSES = {"fwd", "fwdbwd", "decode", "selector"}


def load_script():
    """The script as a module (scripts/ is not a package); registered in sys.modules, where its dataclass
    resolves its annotations."""
    if "bench_attention" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench_attention", SCRIPT)
        sys.modules["bench_attention"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["bench_attention"])
    return sys.modules["bench_attention"]


def test_cpu_smoke_writes_the_results_schema(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu-smoke", "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    elapsed = time.time() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"smoke run {elapsed:.1f} s")  # ~15-20 s on a busy 2-core machine, mostly imports
    doc = json.loads((tmp_path / "attention-cpu.json").read_text())
    assert {"device", "date", "command", "results", "config", "ratios"} <= doc.keys()
    rows = doc["results"]
    for r in rows:
        assert isinstance(r["n"], int) and isinstance(r["method"], str) and r["pass"] in PASSES
        assert isinstance(r["extrapolated"], bool)
        assert r["ms"] is None or (isinstance(r["ms"], float) and r["ms"] > 0)
        assert (r["ms"] is None) == ("error" in r), r
    have = {(r["method"], r["pass"]) for r in rows if r["ms"] is not None}
    want = {
        ("ssa", "fwd"),
        ("ssa", "fwdbwd"),
        ("ssa_selector", "selector"),
        ("fa2_sdpa", "fwd"),
        ("fa2_sdpa", "fwdbwd"),
        ("flex", "fwd"),
        ("ssa_decode_reference", "decode"),
        ("ssa_decode_triton", "decode"),
        ("ssa_decode_triton_step", "decode"),
        ("dense_decode_fa2", "decode"),
    }
    assert want <= have, want - have
    # The smoke run caps dense fwd+bwd at its first size: the second is extrapolated by n^2.
    (ext,) = [r for r in rows if r["extrapolated"]]
    (base,) = [r for r in rows if r["method"] == ext["method"] and r["pass"] == ext["pass"] and not r["extrapolated"]]
    assert ext["ms"] == pytest.approx(base["ms"] * (ext["n"] / base["n"]) ** 2)
    (tri,) = [r for r in rows if r["method"] == "ssa_decode_triton"]
    assert tri["rel_err_vs_reference"] < 1e-5
    assert all("flex_block" in r and "note" in r for r in rows if r["method"] == "flex")
    assert doc["ratios"]["speedup"] and doc["ratios"]["decode"]
    pytest.importorskip("matplotlib")
    assert (tmp_path / "attention-cpu.png").stat().st_size > 0


def in_subprocess(test):
    """Run ``test`` in a fresh interpreter: FlexAttention leaves process-wide state behind (its compile
    machinery's threads) after which a later test's HF ``datasets`` shuffle deadlocked in a clean CI venv."""

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        if os.environ.get("SSA_TEST_CHILD") == test.__name__:
            return test(*args, **kwargs)
        env = {**os.environ, "SSA_TEST_CHILD": test.__name__}
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"{__file__}::{test.__name__}"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]

    return wrapper


def qkv(bt, hq, hkv, n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(bt, h, n, d, generator=g) for h in (hq, hkv, hkv)]


@in_subprocess
def test_flex_mask_with_ssa_block_size_is_ssa_on_kv_head_0(monkeypatch):
    """Block == SSA's block: Flex over the mask equals SSA's sparse attention with kv head 0's selection given
    to every kv head (the benchmark's broadcast), so Flex does exactly SSA's work."""
    import torch.nn.attention.flex_attention as fa

    bench = load_script()
    monkeypatch.setattr(fa, "_FLEX_ATTENTION_DISABLE_COMPILE_DEBUG", True)  # eager, no dynamo: forward only
    cfg = SSAConfig(block_size=16, topk_blocks=3, local_window=32)
    q, k, v = qkv(1, 4, 2, 320, 16, seed=0)
    sel = select_blocks(q, k, cfg)
    mask, ssa_tok, flex_tok = bench.flex_block_mask(sel, cfg, 320, 16, torch.device("cpu"))
    assert ssa_tok == flex_tok
    got = fa.flex_attention(q, k, v, block_mask=mask, enable_gqa=True)
    shared = sel.indices[:, :1].expand(-1, 2, -1, -1).contiguous()
    want, _ = sparse_attention(q, k, v, shared, 16)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@in_subprocess
def test_flex_mask_remapped_to_double_blocks_keeps_the_budget(monkeypatch):
    """Block == 2 x SSA's block: each query block lists its diagonal, sinks and local window, nothing in its
    future, and as many tokens as SSA's row (rounded up to one Flex block); the mask_mod agrees with the blocks."""
    import torch.nn.attention.flex_attention as fa

    bench = load_script()
    monkeypatch.setattr(fa, "_FLEX_ATTENTION_DISABLE_COMPILE_DEBUG", True)
    cfg = SSAConfig(block_size=16, topk_blocks=4, local_window=64)
    n = 1024
    q, k, v = qkv(1, 4, 2, n, 16, seed=1)
    sel = select_blocks(q, k, cfg)
    mask, ssa_tok, flex_tok = bench.flex_block_mask(sel, cfg, n, 32, torch.device("cpu"))
    dense = mask.to_dense()[0, 0]  # (n/32, n/32) 0/1 per block pair
    nq = n // 32
    assert dense.shape == (nq, nq)
    assert torch.equal(dense.diagonal(), torch.ones(nq, dtype=dense.dtype))
    assert not dense.triu(1).any()  # causal at block level
    assert dense[:, 0].all()  # sink
    listed = dense.sum(-1).float()
    rows = (2 * torch.arange(nq) + 1).clamp(max=n // 16 - 1)
    budget = (sel.indices[0, 0, rows] >= 0).sum(-1).float() * 16
    assert (listed * 32 >= budget).all() and (listed * 32 < budget + 32).all()
    assert abs(flex_tok - ssa_tok) <= 32
    token_mask = dense.bool().repeat_interleave(32, 0).repeat_interleave(32, 1).tril()  # (n, n)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=token_mask, enable_gqa=True)
    got = fa.flex_attention(q, k, v, block_mask=mask, enable_gqa=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
