"""The chunked lm_head + cross-entropy against PyTorch's full-logits path."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from train.loss import IGNORE_INDEX, linear_cross_entropy


@pytest.mark.parametrize("n,d,v,chunk", [(257, 32, 101, 50), (64, 16, 320, 64), (1000, 24, 77, 1), (33, 8, 50, 0)])
def test_matches_full_logits_forward_and_gradients(n, d, v, chunk):
    g = torch.Generator().manual_seed(n + v)
    h = torch.randn(n, d, generator=g, requires_grad=True)
    w = torch.randn(v, d, generator=g, requires_grad=True)
    y = torch.randint(0, v, (n,), generator=g)
    y[torch.rand(n, generator=g) < 0.2] = IGNORE_INDEX
    scale = torch.rand((), generator=g) + 0.5  # backward must apply the incoming gradient

    ref = F.cross_entropy(h.double() @ w.double().t(), y, reduction="sum", ignore_index=IGNORE_INDEX)
    ref_gh, ref_gw = torch.autograd.grad(ref * scale, (h, w))
    out = linear_cross_entropy(h, w, y, chunk)
    gh, gw = torch.autograd.grad(out * scale, (h, w))

    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(gh, ref_gh.float(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gw, ref_gw.float(), rtol=1e-4, atol=1e-5)
    assert torch.all(gh[y == IGNORE_INDEX] == 0)  # ignored tokens get no gradient


def test_tied_weight_gets_both_gradients():
    emb = torch.nn.Embedding(50, 16)
    ids = torch.randint(0, 50, (40,))
    y = torch.randint(0, 50, (40,))
    h = emb(ids)
    linear_cross_entropy(h, emb.weight, y, 7).backward()
    chunked = emb.weight.grad.clone()
    emb.weight.grad = None
    F.cross_entropy(emb(ids) @ emb.weight.t(), y, reduction="sum").backward()
    torch.testing.assert_close(chunked, emb.weight.grad, rtol=1e-4, atol=1e-5)


def test_no_grad_path_gives_the_same_loss():
    h, w = torch.randn(100, 8), torch.randn(30, 8)
    y = torch.randint(0, 30, (100,))
    with torch.no_grad():
        a = linear_cross_entropy(h, w, y, 9)
    torch.testing.assert_close(a, F.cross_entropy(h @ w.t(), y, reduction="sum"), rtol=1e-5, atol=1e-4)


PEAK = textwrap.dedent(
    """
    import json, resource, sys, torch, torch.nn.functional as F
    from train.loss import linear_cross_entropy
    torch.manual_seed(0)
    T, D, V = 65536, 64, 4096
    h = torch.randn(T, D, requires_grad=True)
    w = torch.randn(V, D, requires_grad=True)
    y = torch.randint(0, V, (T,))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.argv[1] == "naive":
        loss = F.cross_entropy(h @ w.t(), y, reduction="sum")
    else:
        loss = linear_cross_entropy(h, w, y, 4096)
    loss.backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"extra_mib": (peak - base) / 1024, "loss": loss.item()}))
    """
)


def test_peak_memory_at_64k_tokens_far_below_full_logits():
    """T=64K, vocab 4096: full fp32 logits are 1 GiB (plus their softmax and gradient); the chunked
    path holds one 4096-token chunk (64 MiB). Peak RSS is measured in fresh processes."""
    runs = {}
    for mode in ("naive", "chunked"):
        out = subprocess.run(
            [sys.executable, "-c", PEAK, mode], capture_output=True, text=True, timeout=300, check=True
        )
        runs[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    assert runs["naive"]["loss"] == pytest.approx(runs["chunked"]["loss"], rel=1e-4)
    assert runs["naive"]["extra_mib"] > 1024  # the full [T, V] logits did exist
    assert runs["chunked"]["extra_mib"] < runs["naive"]["extra_mib"] / 4, runs
