"""scripts/bench_attention_kernel.py's variant runners on CPU (Triton's interpreter): the GPU-only pieces (its
inputs, its CUDA-event timer) are replaced by small fp32 CPU inputs and a call counter, so that what a device call
relies on (each spec's override applied and cleared, outputs compared, a broken variant reported) fails here first."""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    spec = importlib.util.spec_from_file_location(
        "bench_attention_kernel", REPO / "scripts" / "bench_attention_kernel.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    g = torch.Generator().manual_seed(0)

    def setup(T, hq=4, hkv=2, d=32, seed=1):
        idx = mod.synthetic_indices(hkv, T // mod.BS, g, n_routed=2, n_local=2, dev="cpu")
        q, k, v = (torch.randn(1, h, T, d, generator=g).requires_grad_() for h in (hq, hkv, hkv))
        return q, k, v, idx, mod.fwd_flops(idx, hq // hkv, mod.BS, d)

    seen = []

    def timeit(fn, reps, warmup=1):
        seen.append(dict(mod.tri.CONFIG_OVERRIDE))  # the override in force while timing
        fn()
        return 1.0

    monkeypatch.setattr(mod, "BS", 16)
    monkeypatch.setattr(mod, "setup", setup)
    monkeypatch.setattr(mod, "timeit", timeit)
    mod.seen = seen
    return mod


def errors(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"rel err (\S+)", text)]


@pytest.mark.parametrize("which", ["fwd", "bwd"])
def test_variants_apply_each_override_and_compare_outputs(bench, capsys, which):
    run = bench.fwd_variants if which == "fwd" else bench.bwd_variants
    specs = ["", f"{'fwd' if which == 'fwd' else 'dq'}:BLOCK_M=32"]
    run(specs, 64, 1)
    out = capsys.readouterr().out
    assert bench.seen == [{}, {specs[1].split(":")[0]: {"BLOCK_M": 32}}] * 2  # two interleaved rounds
    assert bench.tri.CONFIG_OVERRIDE == {}
    errs = errors(out)
    assert len(errs) == 2 and errs[0] == 0.0 and errs[1] < 1e-5  # same math, another tile: fp32 rounding
    assert len(re.findall(rf"variant {which} \[", out)) == 2


def test_a_broken_variant_shows_in_its_error(bench, capsys, monkeypatch):
    """A variant whose forward returns wrong numbers must not read as equal: the comparison is not a no-op."""
    real = bench.tri.sparse_attention_triton

    def broken(*a, **kw):
        out, lse = real(*a, **kw)
        return (out * 1.5 if bench.tri.CONFIG_OVERRIDE else out), lse

    monkeypatch.setattr(bench.tri, "sparse_attention_triton", broken)
    bench.fwd_variants(["", "fwd:BLOCK_M=32"], 64, 1)
    errs = errors(capsys.readouterr().out)
    assert errs[0] == 0.0 and math.isclose(errs[1], 0.5, rel_tol=1e-3)


def test_relerr_in_slices_matches_the_whole(bench, monkeypatch):
    monkeypatch.setattr(bench, "RELERR_SLICE", 1000)
    a = torch.randn(3, 1234)  # four slices, the last one short
    b = a + 1e-3 * torch.randn_like(a)
    want = ((a.double() - b.double()).norm() / b.double().norm()).item()
    assert math.isclose(bench.relerr(a, b), want, rel_tol=1e-9)
