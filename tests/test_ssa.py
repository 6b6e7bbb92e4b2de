"""The SSA layer end to end: the public function, routing gradients, HF integration."""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformers import AutoModelForCausalLM

from ssa_kernels import SSAConfig, routing_bias, select_blocks, sparse_attention, ssa_attention
from ssa_kernels.hf import convert_to_ssa, doc_ids_from_positions, from_pretrained

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/ is not a package
from tiny import tiny_hf_model  # noqa: E402

FULL = {"block_size": 16, "topk_blocks": 1000, "local_window": 32, "top_nodes": 4}  # covers every block


def relerr(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def dense(q, k, v, doc_ids=None):
    g = q.shape[1] // k.shape[1]
    kr, vr = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    t = q.shape[2]
    mask = torch.ones(t, t, dtype=torch.bool).tril()
    if doc_ids is not None:
        mask = mask & (doc_ids[:, None, :, None] == doc_ids[:, None, None, :])
    return F.scaled_dot_product_attention(q, kr, vr, attn_mask=mask)


def qkv(bt, hq, hkv, t, d, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(bt, h, t, d, generator=g, dtype=torch.float64).requires_grad_() for h in (hq, hkv, hkv)]


@pytest.mark.parametrize("hq,hkv,d,t", [(4, 4, 64, 200), (4, 2, 128, 161), (8, 2, 64, 97), (8, 1, 64, 250)])
@pytest.mark.parametrize("routing", ["straight_through", "none"])
def test_full_budget_equals_dense_forward_and_gradients(hq, hkv, d, t, routing):
    q, k, v = qkv(2, hq, hkv, t, d, seed=hq * t + d)
    cfg = SSAConfig(**FULL, routing=routing)
    out = ssa_attention(q, k, v, cfg)
    ref = dense(q, k, v)
    do = torch.randn_like(out)
    got = torch.autograd.grad((out * do).sum(), (q, k, v))
    want = torch.autograd.grad((ref * do).sum(), (q, k, v))
    assert relerr(out, ref) < 1e-6
    for a, b in zip(got, want):
        assert relerr(a, b) < 1e-6


def test_full_budget_with_documents_equals_dense_and_never_crosses():
    q, k, v = qkv(2, 4, 2, 180, 32, seed=3)
    pos = torch.cat([torch.arange(70), torch.arange(50), torch.arange(60)]).expand(2, -1)
    doc_ids = doc_ids_from_positions(pos)
    assert doc_ids[0, 69] == 0 and doc_ids[0, 70] == 1 and doc_ids[0, -1] == 2
    out = ssa_attention(q, k, v, SSAConfig(**FULL), doc_ids=doc_ids)
    assert relerr(out, dense(q, k, v, doc_ids)) < 1e-6


def test_routing_gradient_reaches_the_scores_only_when_switched_on():
    """With a budget smaller than the candidates, straight-through adds a gradient path to q and k
    through the routing scores: forward identical, gradients differ; with routing=none they equal
    the gradients of attention over the same (fixed) selection."""
    q, k, v = qkv(1, 2, 1, 256, 16, seed=7)
    on = SSAConfig(block_size=16, topk_blocks=2, local_window=32, top_nodes=4)
    off = SSAConfig(block_size=16, topk_blocks=2, local_window=32, top_nodes=4, routing="none")
    out_on, out_off = ssa_attention(q, k, v, on), ssa_attention(q, k, v, off)
    assert torch.equal(out_on, out_off)
    g_on = torch.autograd.grad(out_on.square().sum(), (q, k))
    g_off = torch.autograd.grad(out_off.square().sum(), (q, k))
    assert relerr(g_on[0], g_off[0]) > 1e-3 and relerr(g_on[1], g_off[1]) > 1e-3


def test_selection_is_shared_by_the_group_and_causal():
    q, k, _ = qkv(1, 8, 2, 512, 16, seed=11)
    sel = select_blocks(q.float(), k.float(), SSAConfig(block_size=16, topk_blocks=3, local_window=32, top_nodes=4))
    nb = 32
    assert sel.indices.shape[:3] == (1, 2, nb)
    i = torch.arange(nb).view(1, 1, nb, 1)
    assert ((sel.indices <= i) | (sel.indices == -1)).all()


# --- HF integration -----------------------------------------------------------------------------

ARCHS = ["llama", "qwen2", "qwen3", "mistral"]


def tiny_model(arch):
    return tiny_hf_model(arch)


@pytest.mark.parametrize("arch", ARCHS)
def test_convert_keeps_weights_and_matches_dense_at_full_budget(arch, tmp_path):
    model = tiny_model(arch)
    ids = torch.randint(0, 97, (2, 150))
    ref = model(ids).logits
    before = {n: p.clone() for n, p in model.state_dict().items()}
    convert_to_ssa(model, SSAConfig(**FULL))
    assert model.config._attn_implementation == "ssa"
    after = model.state_dict()
    assert all(torch.equal(p, after[n]) for n, p in before.items())
    out = model(ids).logits
    assert relerr(out, ref) < 1e-5
    # save / load round trip keeps the SSA settings and the outputs
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(tmp_path)
    assert loaded.config.ssa == model.config.ssa
    saved = loaded.state_dict()  # every weight, the learned routers' included
    assert saved.keys() == after.keys() and all(torch.equal(p, saved[n]) for n, p in after.items())
    assert torch.equal(loaded(ids).logits, out)


def test_plain_hf_load_of_a_routed_model_fails_clearly(tmp_path):
    model = convert_to_ssa(tiny_model("llama"), SSAConfig(block_size=16, topk_blocks=1, local_window=16, top_nodes=4))
    model.save_pretrained(tmp_path)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="ssa")  # no routers attached
    with pytest.raises(RuntimeError, match="ssa_kernels.hf.from_pretrained"):
        plain(torch.randint(0, 97, (1, 64)))


def test_convert_rejects_unsupported_models():
    model = tiny_model("llama")
    model.config.model_type = "gpt2"
    with pytest.raises(ValueError, match="model_type='gpt2'"):
        convert_to_ssa(model)


def test_sparse_budget_differs_from_dense_and_trains():
    model = convert_to_ssa(tiny_model("llama"), SSAConfig(block_size=16, topk_blocks=1, local_window=16, top_nodes=4))
    ids = torch.randint(0, 97, (1, 256))
    out = model(ids, labels=ids)
    dense_model = tiny_model("llama")
    assert not torch.allclose(out.logits, dense_model(ids).logits, atol=1e-3)
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


# --- linear memory of the whole layer (selection + routing bias + attention, forward and backward) --


def _layer_largest_tensor(t):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from memprobe import MaxTensorProbe

    g = torch.Generator().manual_seed(t)
    q, k, v = (torch.randn(1, h, t, 8, generator=g).requires_grad_() for h in (2, 1, 1))
    cfg = SSAConfig(block_size=16, topk_blocks=4, local_window=32, top_nodes=8)
    with MaxTensorProbe() as probe:
        ssa_attention(q, k, v, cfg).square().sum().backward()
    return probe.max_numel


def test_layer_largest_tensor_grows_linearly():
    small, large = _layer_largest_tensor(2**13), _layer_largest_tensor(2**15)
    assert large <= 4.5 * small, (small, large)  # an (n/B)^2 or n x n/B tensor would grow 16x


LAYER_RSS = """
import json, resource, sys, torch
from ssa_kernels import SSAConfig, ssa_attention
n = int(sys.argv[1])
g = torch.Generator().manual_seed(0)
q, k, v = (torch.randn(1, h, n, 32, generator=g).requires_grad_() for h in (2, 1, 1))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ssa_attention(q, k, v, SSAConfig(topk_blocks=8, local_window=128)).square().sum().backward()
extra = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
print(json.dumps({"extra_mib": extra, "finite": bool(torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all())}))
"""


def test_layer_peak_memory_16k_to_64k_is_linear():
    """Peak RSS of one SSA layer's forward + backward (block 64, GQA 2:1, d 32) in fresh processes.
    A single fp32 T x nb tensor at 64K would be 256 MiB, T x T 16 GiB."""
    import json
    import subprocess
    import sys

    runs = {}
    for n in (16384, 65536):
        out = subprocess.run([sys.executable, "-c", LAYER_RSS, str(n)], capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        runs[n] = json.loads(out.stdout.strip().splitlines()[-1])
    assert runs[16384]["finite"] and runs[65536]["finite"]
    assert runs[65536]["extra_mib"] <= 5 * max(runs[16384]["extra_mib"], 16), runs
    assert runs[65536]["extra_mib"] < 400, runs


def test_trainer_model_path_keeps_trained_routers(tmp_path):
    """model.path pointing at a saved SSA model (e.g. a checkpoint's model/ dir) loads its routers,
    not fresh ones initialised from q/k."""
    from train.config import AttentionConfig, ModelConfig
    from train.model import build_model

    model = convert_to_ssa(tiny_model("llama"), SSAConfig(block_size=16, topk_blocks=1, local_window=16, top_nodes=4))
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.ssa_router.k.weight.add_(1.0)  # "trained": no longer k_proj's copy
    model.save_pretrained(tmp_path)
    attention = AttentionConfig(name="ssa", ssa=SSAConfig(block_size=16, topk_blocks=1, local_window=16, top_nodes=4))
    loaded = build_model(
        ModelConfig(path=str(tmp_path)), attention, AutoModelForCausalLM.from_pretrained(tmp_path).config
    )
    want = model.state_dict()
    assert all(torch.equal(p, want[n]) for n, p in loaded.state_dict().items())


def test_triton_backend_matches_reference_with_a_learned_route():
    """ssa_attention's dispatch: backend="triton" (Triton's interpreter on CPU) gives the reference's output
    and gradients, the routing gradient into a separate route (q, k) included."""
    torch.manual_seed(0)
    cfg = SSAConfig(block_size=16, topk_blocks=2, local_window=32, top_nodes=4)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    q, k, v = (torch.randn(1, h, 200, 16, device=dev, requires_grad=True) for h in (4, 2, 2))
    rq, rk = (torch.randn(1, 2, 200, 16, device=dev, requires_grad=True) for _ in range(2))
    results = []
    for backend in ("reference", "triton"):
        out = ssa_attention(q, k, v, cfg, backend=backend, route=(rq, rk))
        grads = torch.autograd.grad((out * torch.linspace(-1, 1, 16, device=dev)).sum(), (q, k, v, rq, rk))
        results.append((out, *grads))
    for got, want in zip(results[1], results[0]):
        assert relerr(got, want) < 1e-5
    assert results[0][4].abs().sum() > 0  # the routing gradient reached route_k


# --- the attention router's routing gradient, fused into the backends' backward -----------------


def _attend(backend):
    if backend == "triton":
        from ssa_kernels.attention.triton import sparse_attention_triton

        return sparse_attention_triton
    return sparse_attention


@pytest.mark.parametrize("backend,dtype", [("reference", torch.float64), ("triton", torch.float32)])
def test_fused_routing_gradient_equals_autograd_through_the_scores(backend, dtype):
    """route=None: the backends add the straight-through routing gradient to dq and dk in place
    (``routed_mask``, attention/routing.py); it equals autograd through ``routing_bias`` (block means of
    q and k, the scores, the bias): GQA 4:2, batch 2, ragged T, documents."""
    dev = "cuda" if torch.cuda.is_available() and backend == "triton" else "cpu"
    cfg = SSAConfig(block_size=16, topk_blocks=2, local_window=32, top_nodes=4)
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, h, 231, 16, generator=g, dtype=dtype).to(dev).requires_grad_() for h in (4, 2, 2))
    pos = torch.cat([torch.arange(150), torch.arange(81)]).expand(2, -1)
    doc_ids = doc_ids_from_positions(pos).to(dev)
    do = torch.randn(2, 4, 231, 16, generator=g, dtype=dtype).to(dev)
    fused = ssa_attention(q, k, v, cfg, doc_ids=doc_ids, backend=backend)
    got = torch.autograd.grad((fused * do).sum(), (q, k, v))
    sel = select_blocks(q.detach(), k.detach(), cfg, doc_ids)
    bias = routing_bias(q, k, sel, cfg, doc_ids)
    out, _ = _attend(backend)(q, k, v, sel.indices, cfg.block_size, doc_ids=doc_ids, block_bias=bias)
    want = torch.autograd.grad((out * do).sum(), (q, k, v))
    plain, _ = _attend(backend)(q, k, v, sel.indices, cfg.block_size, doc_ids=doc_ids)
    without = torch.autograd.grad((plain * do).sum(), (q, k))
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert relerr(fused, out) < tol
    for a, b in zip(got, want):
        assert relerr(a, b) < tol
    # the routing term is really there (q and k), and is what differs from attention alone
    assert relerr(without[0], want[0]) > 1e-4 and relerr(without[1], want[1]) > 1e-4


def test_routing_gradient_reuses_the_fast_selectors_block_means(monkeypatch):
    """The fast selector keeps the block means it scored (``Selection.means``: q̄ over each block and the group, k̄
    per block; only for q, k that carry a gradient) and ``ssa_attention`` hands them to the Triton backward, which then pools q and k no second time:
    the means equal ``query_summary`` / ``block_means`` (ragged T, GQA 4:2, batch 2) and dq, dk equal the gradients
    computed with the means pooled again in the backward."""
    from ssa_kernels.attention import routing
    from ssa_kernels.selector import fast
    from ssa_kernels.selector.reference import block_means, query_summary

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = SSAConfig(block_size=16, topk_blocks=2, local_window=32, top_nodes=4)
    g = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(2, h, 231, 16, generator=g).to(dev).requires_grad_() for h in (4, 2, 2))
    do = torch.randn(2, 4, 231, 16, generator=g).to(dev)
    assert fast.select_blocks_fast(q.detach(), k.detach(), cfg).means is None  # no backward: no copies made
    with torch.no_grad():  # as ssa_attention calls it
        sel = fast.select_blocks_fast(q, k, cfg)
    assert relerr(sel.means[0], query_summary(q.detach(), 2, 16)) < 1e-6
    assert relerr(sel.means[1], block_means(k.detach(), 16)) < 1e-6
    pooled = []
    summary = routing.query_summary
    monkeypatch.setattr(routing, "query_summary", lambda *a: pooled.append(1) or summary(*a))

    def grads():
        return torch.autograd.grad((ssa_attention(q, k, v, cfg, backend="triton") * do).sum(), (q, k))

    reused = grads()
    assert not pooled, "the backward pooled q again"
    monkeypatch.setattr(fast, "_means", lambda *a: None)  # a Selection without means
    again = grads()
    assert pooled, "the backward did not pool q without the selector's means"
    for a, b in zip(reused, again):
        assert relerr(a, b) < 1e-5


class _BigStorages(TorchDispatchMode):
    """Fresh storages (aliasing no input of the op: not views, detach or Triton-interpreter copies back)
    of at least ``nbytes`` that ops produce."""

    def __init__(self, nbytes):
        super().__init__()
        self.nbytes, self.seen = nbytes, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)
        }
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().nbytes() >= self.nbytes:
                if t.untyped_storage().data_ptr() not in inputs:
                    self.seen.add(t.untyped_storage().data_ptr())
        return out


@pytest.mark.parametrize("backend", ["triton"])  # the reference's chunk temporaries are larger than q here
def test_routing_gradient_makes_no_q_sized_temporary(backend):
    """The Triton backward of an SSA layer whose q and k route allocates one q-sized buffer: dq itself.
    Through autograd (``routing_bias``) the block means' gradient is a second one (8 GiB at 1M tokens)."""
    dev = "cuda" if torch.cuda.is_available() and backend == "triton" else "cpu"
    cfg = SSAConfig(block_size=16, topk_blocks=2, local_window=32, top_nodes=4)
    q, k, v = (torch.randn(1, h, 256, 16, device=dev, requires_grad=True) for h in (8, 2, 2))
    q_bytes = q.untyped_storage().nbytes()

    def backward_storages(out):
        do = torch.randn_like(out)
        with _BigStorages(q_bytes) as probe:
            out.backward(do)
        return len(probe.seen)

    fused = backward_storages(ssa_attention(q, k, v, cfg, backend=backend))
    sel = select_blocks(q.detach(), k.detach(), cfg)
    bias = routing_bias(q, k, sel, cfg)
    plain = backward_storages(_attend(backend)(q, k, v, sel.indices, cfg.block_size, block_bias=bias)[0])
    assert fused == 1, fused
    assert plain >= 2, plain  # the probe sees the autograd path's temporary


# --- pooled routing: the learned router projects block means of the hidden states -------------------


def _router_case(dtype, dev="cpu", t=231):
    from ssa_kernels.router import SSARouter

    torch.manual_seed(3)
    router = SSARouter(24, 2, 16).to(device=dev, dtype=dtype)
    hidden = torch.randn(2, t, 24, device=dev, dtype=dtype)
    q, k, v = (torch.randn(2, h, t, 16, device=dev, dtype=dtype, requires_grad=True) for h in (4, 2, 2))
    pos = torch.cat([torch.arange(150), torch.arange(t - 150)]).expand(2, -1)
    return router, hidden, (q, k, v), doc_ids_from_positions(pos).to(dev)


@pytest.mark.parametrize("bias", [False, True])
def test_router_from_bf16_attention_is_the_fp32_router_rounded(bias):
    """A bf16 build (the offload rungs under bf16) of a bf16 checkpoint initialises the router as the fp32 build
    does, rounded to bf16 (what DeepSpeed does to the fp32 build's router): torch's mean over a group's query heads
    accumulates bf16 in fp32 and rounds once."""
    from ssa_kernels.router import SSARouter

    torch.manual_seed(0)
    attn = torch.nn.Module()
    attn.q_proj, attn.k_proj = torch.nn.Linear(64, 8 * 16, bias=bias), torch.nn.Linear(64, 2 * 16, bias=bias)
    attn.to(torch.bfloat16).float()  # bf16 values (a bf16 checkpoint), held in fp32
    fp32 = SSARouter.from_attention(attn, 2, 16).state_dict()
    bf16 = SSARouter.from_attention(attn.to(torch.bfloat16), 2, 16).state_dict()
    assert sorted(fp32) == sorted(bf16) and len(fp32) == 2 + 2 * bias
    for k, w in bf16.items():
        assert w.dtype == torch.bfloat16 and torch.equal(w, fp32[k].bfloat16()), k


def test_pooled_router_gives_the_block_means_of_its_per_token_outputs():
    router, hidden, _, _ = _router_case(torch.float64)
    route = router.pooled(hidden, 16)
    rq, rk = router(hidden)
    assert route.seq_len == 231 and route.q_mean.shape == (2, 2, 15, 16)
    for got, per_token in ((route.q_mean, rq), (route.k_mean, rk)):
        want = torch.stack([per_token[:, :, i * 16 : (i + 1) * 16].mean(2) for i in range(15)], 2)
        assert relerr(got, want) < 1e-12


@pytest.mark.parametrize("backend,dtype", [("reference", torch.float64), ("triton", torch.float32)])
def test_pooled_route_selects_and_trains_like_the_per_token_route(backend, dtype):
    """ssa_attention(route=PooledRoute) equals route=(route_q, route_k) per token: same selection, output
    and gradients (q, k, v and the router's weights, which only the routing gradient reaches)."""
    from ssa_kernels.selector import select_blocks_pooled

    dev = "cuda" if torch.cuda.is_available() and backend == "triton" else "cpu"
    router, hidden, (q, k, v), doc_ids = _router_case(dtype, dev)
    cfg = SSAConfig(block_size=16, topk_blocks=2, local_window=32, top_nodes=4, backend=backend)
    sel_tok = select_blocks(*(x.detach() for x in router(hidden)), cfg, doc_ids)
    sel_pool = select_blocks_pooled(router.pooled(hidden, 16), cfg, doc_ids)
    assert torch.equal(sel_tok.indices, sel_pool.indices)
    do = torch.randn(2, 4, 231, 16, device=dev, dtype=dtype)
    results = []
    for route in (router(hidden), router.pooled(hidden, 16)):
        out = ssa_attention(q, k, v, cfg, doc_ids=doc_ids, route=route)
        grads = torch.autograd.grad((out * do).sum(), (q, k, v, router.q.weight, router.k.weight))
        results.append((out, *grads))
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    for got, want in zip(results[1], results[0]):
        assert relerr(got, want) < tol
    assert results[1][4].abs().sum() > 0  # the routing gradient reached the router


def test_fast_pooled_selector_matches_the_reference():
    from ssa_kernels.selector import PooledRoute, select_blocks_pooled
    from ssa_kernels.selector.fast import select_blocks_fast_pooled

    g = torch.Generator().manual_seed(9)
    cfg = SSAConfig(block_size=16, topk_blocks=3, local_window=32, top_nodes=4)
    route = PooledRoute(torch.randn(2, 2, 40, 16, generator=g), torch.randn(2, 2, 40, 16, generator=g), 633)
    pos = torch.cat([torch.arange(300), torch.arange(333)]).expand(2, -1)
    doc_ids = doc_ids_from_positions(pos)
    want = select_blocks_pooled(route, cfg, doc_ids)
    got = select_blocks_fast_pooled(route, cfg, doc_ids)
    assert torch.equal(got.indices, want.indices) and torch.equal(got.routed, want.routed)
    with pytest.raises(ValueError, match="nb = ceil"):
        select_blocks_pooled(PooledRoute(route.q_mean, route.k_mean, 500), cfg)
