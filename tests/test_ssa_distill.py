"""Router distillation (``routing: distill``, ``ssa_kernels/distill/``): the dense block mass (reference and
Triton kernel) against a T x T softmax, the loss against a per-block loop (value and gradient), the attention output and its
q/k/v gradients untouched, the router learning during a dense warm-up where straight-through cannot,
config errors, and a training run through the trainer."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ssa_kernels import PooledRoute, SSAConfig, ssa_attention
from ssa_kernels.distill import dense_block_mass, distill_query_blocks, router_distill_loss
from ssa_kernels.hf import convert_to_ssa, doc_ids_from_positions
from ssa_kernels.selector.reference import block_means, block_minmax, routed_bounds
from train.config import ConfigError, to_config
from train.probes import train_block_retrieval

sys.path.insert(0, str(Path(__file__).parent))
from test_train import compose_cfg, run_inprocess  # noqa: E402
from tiny import tiny_hf_model  # noqa: E402

SMALL = {"block_size": 16, "topk_blocks": 2, "local_window": 32, "top_nodes": 4}
DEV = "cuda" if torch.cuda.is_available() else "cpu"  # the Triton kernel: compiled on a GPU, interpreted on CPU


def qk(bt, hq, hkv, t, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(bt, hq, t, d, generator=g) * 2, torch.randn(bt, hkv, t, d, generator=g)


def packed(bt, *lengths):
    return doc_ids_from_positions(torch.cat([torch.arange(n) for n in lengths]).expand(bt, -1))


def brute_mass(q, k, block_size, doc_ids, far=None, local_blocks=1, rows="mean"):
    """[Bt, Hkv, nb, nb] fp64 from the full T x T softmax (tests only); with far = (q_far, k_far) the logit of
    query t on key s is q_far . k_far where block(s) <= block(t) - local_blocks. rows="max": per key block the
    largest mass of one row of the query block, of any of the kv head's query heads."""
    bt, hq, t, d = q.shape
    hkv = k.shape[1]
    doc = doc_ids if doc_ids is not None else torch.zeros(bt, t, dtype=torch.long)
    pos = torch.arange(t)
    allowed = (pos[None, :] <= pos[:, None]) & (doc[:, :, None] == doc[:, None, :])  # (Bt, T, T)

    def dots(a, b):
        return a.double() @ b.double().repeat_interleave(hq // hkv, 1).transpose(-1, -2) / math.sqrt(d)

    logits = dots(q, k)
    if far is not None:
        is_far = pos[None, :] // block_size <= pos[:, None] // block_size - local_blocks  # (T, T)
        logits = torch.where(is_far, dots(*far), logits)
    p = torch.softmax(logits.masked_fill(~allowed[:, None], -math.inf), -1)  # (Bt, Hq, T, T)
    nb = -(-t // block_size)
    kb = torch.nn.functional.one_hot(pos // block_size, nb).double()  # (T, nb)
    per_row = p @ kb  # (Bt, Hq, T, nb)
    reduce = (lambda x: x.amax(2)) if rows == "max" else (lambda x: x.mean(2))
    mass = torch.stack(
        [reduce(per_row[:, :, i * block_size : min(t, i * block_size + block_size)]) for i in range(nb)], 2
    )
    mass = mass.view(bt, hkv, hq // hkv, nb, nb)  # (Bt, Hkv, G, nb, nb)
    return mass.amax(2) if rows == "max" else mass.mean(2)


@pytest.mark.parametrize("rows", ["mean", "max"])
@pytest.mark.parametrize("docs", [None, (50, 61, 62)])
@pytest.mark.parametrize("max_elements", [0, 1 << 20])  # one query block at a time, or all at once
def test_dense_block_mass_matches_a_dense_softmax(docs, max_elements, rows):
    t, B = 173, 16  # ragged last block
    q, k = qk(2, 4, 2, t, 8, seed=1)
    doc_ids = packed(2, *docs) if docs else None
    blocks = torch.tensor([0, 3, 7, 10])  # 10: the partial last block
    got = dense_block_mass(q, k, blocks, B, doc_ids, max_elements=max_elements, rows=rows)
    want = brute_mass(q, k, B, doc_ids, rows=rows)[:, :, blocks]
    assert got.shape == (2, 2, 4, 11)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    if rows == "mean":
        torch.testing.assert_close(got.sum(-1), torch.ones(2, 2, 4), rtol=1e-5, atol=1e-5)
    else:  # one row's mass per key block: at least the mean's, and the max over blocks sums to more than 1
        mean = brute_mass(q, k, B, doc_ids)[:, :, blocks]
        assert (want >= mean - 1e-12).all() and (want.sum(-1)[:, :, 1:] > 1.05).all()


@pytest.mark.parametrize("max_elements", [0, 1 << 20])
def test_dense_block_mass_with_far_blocks_matches_a_dense_softmax(max_elements):
    """distill_target=attended: keys outside the local window scored with (q_far, k_far), the rest with (q, k),
    in one softmax; differs from the true-distance mass (so the test can tell them apart)."""
    t, B, local = 173, 16, 2
    q, k = qk(2, 4, 2, t, 8, seed=11)
    far = qk(2, 4, 2, t, 8, seed=12)
    doc_ids = packed(2, 70, 103)
    blocks = torch.tensor([0, 2, 5, 9, 10])
    got = dense_block_mass(q, k, blocks, B, doc_ids, max_elements=max_elements, far=far, local_blocks=local)
    want = brute_mass(q, k, B, doc_ids, far=far, local_blocks=local)[:, :, blocks]
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.sum(-1), torch.ones(2, 2, 5), rtol=1e-5, atol=1e-5)
    plain = brute_mass(q, k, B, doc_ids)[:, :, blocks]
    assert (want - plain).abs().max() > 0.05
    torch.testing.assert_close(want[:, :, 0], plain[:, :, 0])  # block 0 has no far keys (block 2 has block 0)


TRITON_CASES = [  # bt, hq, hkv, t, d, block, docs, far, dtype: GQA 1 / 2 / 3 / 4, ragged T, d not a power of two
    (2, 4, 2, 173, 8, 16, None, False, torch.float32),
    (2, 4, 2, 173, 24, 16, (50, 61, 62), True, torch.float32),
    (1, 3, 1, 150, 16, 32, None, True, torch.float16),
    (2, 8, 2, 130, 32, 16, (70, 60), False, torch.float16),
    (1, 2, 2, 100, 16, 16, None, False, torch.float32),
    (2, 6, 2, 90, 16, 12, (40, 50), True, torch.float32),  # a block of 12 keys (padded tiles)
]


@pytest.mark.parametrize("rows", ["mean", "max"])
@pytest.mark.parametrize("case", TRITON_CASES)
def test_block_mass_kernel_matches_a_dense_softmax(case, rows):
    """The Triton kernel (Triton's interpreter on CPU) against the fp64 T x T softmax, into a NaN-filled output:
    every (query block, key block) entry written, the ones after the query block 0; rows averaged or maxed."""
    from ssa_kernels.distill.reference import doc_starts
    from ssa_kernels.distill.triton import dense_block_mass_triton

    bt, hq, hkv, t, d, B, docs, use_far, dtype = case
    q, k = qk(bt, hq, hkv, t, d, seed=21)
    far = qk(bt, hq, hkv, t, d, seed=22) if use_far else None
    doc_ids = packed(bt, *docs) if docs else None
    nb = -(-t // B)
    blocks = torch.tensor(sorted({0, 2, nb // 2, nb - 1}))
    local = 2
    out = torch.full((bt, hkv, len(blocks), nb), math.nan, device=DEV)
    start = doc_starts(doc_ids, bt, t, q.device).to(DEV) if docs else None

    def low(x):
        return x.to(device=DEV, dtype=dtype)

    lowp = (low(q), low(k), None if far is None else (low(far[0]), low(far[1])))
    got = dense_block_mass_triton(lowp[0], lowp[1], blocks.to(DEV), B, start, None, lowp[2], local, out=out, rows=rows)
    assert got.data_ptr() == out.data_ptr() and not got.isnan().any()
    got = got.cpu()
    exact = [x.to(dtype).double() for x in (q, k)]  # the inputs as the kernel saw them
    exact_far = None if far is None else tuple(x.to(dtype).double() for x in far)
    want = brute_mass(*exact, B, doc_ids, far=exact_far, local_blocks=local, rows=rows)[:, :, blocks]
    tol = 1e-5 if dtype == torch.float32 else 2e-3  # fp16 products accumulated in fp32
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)
    after = torch.arange(nb)[None, :] > blocks[:, None]  # key blocks after the query block
    assert (got[:, :, after] == 0).all()
    if rows == "mean":
        torch.testing.assert_close(got.sum(-1), torch.ones(bt, hkv, len(blocks)), rtol=1e-4, atol=1e-4)


def test_block_mass_of_no_query_blocks_is_empty():
    from ssa_kernels.distill.triton import dense_block_mass_triton

    q, k = qk(2, 4, 2, 100, 16, seed=8)
    none = torch.zeros(0, dtype=torch.long)
    assert dense_block_mass(q, k, none, 16).shape == (2, 2, 0, 7)
    assert dense_block_mass_triton(q.to(DEV), k.to(DEV), none.to(DEV), 16).shape == (2, 2, 0, 7)


@pytest.mark.parametrize("rows", ["mean", "max"])
@pytest.mark.parametrize("docs", [None, (90, 83)])
def test_distill_loss_with_the_triton_target_equals_the_reference(docs, rows):
    """router_distill_loss(backend=triton) takes its target from the kernel: the same loss and router gradient."""
    cfg = SSAConfig(**SMALL, routing="distill", far_distance=64, distill_target="attended", distill_rows=rows)
    t = 173
    q, k = (x.to(DEV) for x in qk(2, 4, 2, t, 8, seed=5))
    far = tuple(x.to(DEV) for x in qk(2, 4, 2, t, 8, seed=6))
    doc_ids = packed(2, *docs).to(DEV) if docs else None
    g = torch.Generator().manual_seed(7)
    nb = -(-t // cfg.block_size)
    qm = torch.randn(2, 2, nb, 8, generator=g).to(DEV).requires_grad_()
    km = torch.randn(2, 2, nb, 8, generator=g).to(DEV).requires_grad_()
    blocks = distill_query_blocks(t, SSAConfig(**SMALL, distill_blocks=0), q.device)
    losses, grads = [], []
    if docs:  # the first row's document ids alone serve both batch rows (HF's [1, T] position ids)
        shared = router_distill_loss(q, k, PooledRoute(qm, km, t), cfg, doc_ids[:1], query_blocks=blocks, far=far,
                                     backend="triton")  # fmt: skip
        want = router_distill_loss(q, k, PooledRoute(qm, km, t), cfg, doc_ids[:1].expand(2, -1), query_blocks=blocks,
                                   far=far)  # fmt: skip
        torch.testing.assert_close(shared, want, rtol=1e-5, atol=1e-7)
    for backend in ("reference", "triton"):
        loss = router_distill_loss(q, k, PooledRoute(qm, km, t), cfg, doc_ids, query_blocks=blocks, far=far,
                                   backend=backend)  # fmt: skip
        losses.append(loss)
        grads.append(torch.autograd.grad(loss, (qm, km)))
    assert losses[0].item() > 0
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-7)
    for a, b in zip(grads[1], grads[0]):
        assert b.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 tl.dot is wrong in Triton's interpreter")
@pytest.mark.parametrize("rows", ["mean", "max"])
def test_block_mass_kernel_bf16_on_the_gpu(rows):
    """The recipe's shape (8 q / 4 kv heads of 64, blocks of 64, 4,096 tokens, far blocks, every query block) in
    bf16 against the fp32 reference."""
    from ssa_kernels.distill.reference import dense_block_mass
    from ssa_kernels.distill.triton import dense_block_mass_triton

    g = torch.Generator(device="cuda").manual_seed(0)
    bt, hq, hkv, t, d, B = 2, 8, 4, 4096, 64, 64

    def r(h):
        return torch.randn(bt, h, t, d, device="cuda", generator=g).bfloat16()

    q, k, qf, kf = r(hq), r(hkv), r(hq), r(hkv)
    blocks = torch.arange(t // B, device="cuda")
    out = torch.full((bt, hkv, len(blocks), t // B), math.nan, device="cuda")
    got = dense_block_mass_triton(q, k, blocks, B, None, None, (qf, kf), 4, out=out, rows=rows)
    want = dense_block_mass(q.float(), k.float(), blocks, B, None, far=(qf.float(), kf.float()), local_blocks=4,
                            rows=rows)  # fmt: skip
    assert not got.isnan().any()
    torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-4)


def loop_loss(q, k, qm, km, cfg, doc_ids, blocks, far=None, bounds=None):
    """The distillation loss written out per (batch row, kv head, query block) in fp64 (tests only); with
    bounds = (low, high) each block scores sum_d max(q_d low_d, q_d high_d) (distill_score=bound) instead of
    q . k_mean."""
    mass = brute_mass(q, k, cfg.block_size, doc_ids, far, cfg.local_blocks, rows=cfg.distill_rows)
    lo, hi = routed_bounds(doc_ids, q.shape[2], cfg, q.device)
    num, den = 0.0, 0.0
    for b in range(q.shape[0]):
        for h in range(k.shape[1]):
            for i in blocks.tolist():
                js = list(range(int(lo[min(b, lo.shape[0] - 1), i]), int(hi[i])))
                if len(js) < 2:
                    continue
                m = mass[b, h, i, js]
                target = m / m.sum()
                w = m.sum().clamp_max(1.0)  # distill_rows=max: its maxima may sum past 1
                qi = qm[b, h, i].double()
                if bounds is None:
                    scores = torch.stack([qi @ km[b, h, j].double() for j in js])
                else:
                    low, high = (x[b, h].double() for x in bounds)
                    scores = torch.stack([torch.maximum(qi * low[j], qi * high[j]).sum() for j in js])
                scores = scores / math.sqrt(qm.shape[-1])
                log_p = torch.log_softmax(scores, 0)
                kl = (target * (target.log() - log_p)).sum()
                num, den = num + w * kl, den + w
    return num / den


@pytest.mark.parametrize("rows", ["mean", "max"])
@pytest.mark.parametrize("docs", [None, (90, 83)])
def test_distill_loss_and_gradient_match_a_loop(docs, rows):
    t, cfg = 173, SSAConfig(**SMALL, routing="distill", distill_rows=rows)
    q, k = qk(2, 4, 2, t, 8, seed=2)
    doc_ids = packed(2, *docs) if docs else None
    g = torch.Generator().manual_seed(3)
    nb = -(-t // cfg.block_size)
    qm = torch.randn(2, 2, nb, 8, generator=g, dtype=torch.float64, requires_grad=True)
    km = torch.randn(2, 2, nb, 8, generator=g, dtype=torch.float64, requires_grad=True)
    blocks = distill_query_blocks(t, SSAConfig(**SMALL, distill_blocks=0), q.device)
    assert blocks.tolist() == list(range(4, nb))  # first block with 2 routable blocks: sink 1 + window 2 + 1
    got = router_distill_loss(q, k, PooledRoute(qm, km, t), cfg, doc_ids, query_blocks=blocks)
    want = loop_loss(q, k, qm, km, cfg, doc_ids, blocks)
    assert got.item() > 0
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-8)
    g_got = torch.autograd.grad(got, (qm, km))
    g_want = torch.autograd.grad(want, (qm, km))
    for a, b in zip(g_got, g_want):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("docs", [None, (90, 83)])
def test_distill_bound_loss_and_gradient_match_a_loop(docs):
    """distill_score=bound: the router's block scores are the leaf bound over the blocks' key min / max; loss and
    gradients (to the mean query, the extremes; none to the key means) equal the loop's, and differ from mean's."""
    t = 173
    cfg = SSAConfig(**SMALL, routing="distill", distill_score="bound")
    q, k = qk(2, 4, 2, t, 8, seed=21)
    doc_ids = packed(2, *docs) if docs else None
    g = torch.Generator().manual_seed(22)
    nb = -(-t // cfg.block_size)
    qm, km, a, b = (torch.randn(2, 2, nb, 8, generator=g, dtype=torch.float64) for _ in range(4))
    low, high = torch.minimum(a, b), torch.maximum(a, b)
    qm, km, low, high = (x.requires_grad_() for x in (qm, km, low, high))
    blocks = distill_query_blocks(t, SSAConfig(**SMALL, distill_blocks=0), q.device)
    got = router_distill_loss(q, k, PooledRoute(qm, km, t, low, high), cfg, doc_ids, query_blocks=blocks)
    want = loop_loss(q, k, qm, km, cfg, doc_ids, blocks, bounds=(low, high))
    mean = loop_loss(q, k, qm, km, cfg, doc_ids, blocks)
    assert got.item() > 0 and abs(got.item() - mean.item()) > 1e-3
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-8)
    g_got = torch.autograd.grad(got, (qm, low, high), retain_graph=True)
    g_want = torch.autograd.grad(want, (qm, low, high))
    for x, y in zip(g_got, g_want):
        assert y.abs().sum() > 0
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-8)
    assert torch.autograd.grad(got, km, allow_unused=True)[0] is None  # the means are not what it scores
    with pytest.raises(ValueError, match=r"attention\.distill_score=mean"):  # no extremes (the SP wrappers' route)
        router_distill_loss(q, k, PooledRoute(qm, km, t), cfg, doc_ids, query_blocks=blocks)


def test_hf_layer_distils_the_bound_score_into_the_router_keys():
    """A converted tiny HF model, one backward with routing=distill: under distill_score=bound the router (pooled
    route, SSARouter.pooled with bounds_grad) gets the bound loss's gradient, in its key projection through the
    per-token keys at each block's extremes, unlike under mean; the LM loss is the same."""
    grads, losses = {}, {}
    for score in ("mean", "bound"):
        model = tiny_hf_model("llama")
        cfg = SSAConfig(block_size=8, topk_blocks=2, local_window=16, top_nodes=4, routing="distill",
                        distill_blocks=0, distill_weight=1.0, distill_score=score)  # fmt: skip
        convert_to_ssa(model, cfg)
        ids = torch.randint(0, model.config.vocab_size, (1, 96), generator=torch.Generator().manual_seed(1))
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        router = model.model.layers[1].self_attn.ssa_router
        grads[score] = (router.q.weight.grad.clone(), router.k.weight.grad.clone())
        losses[score] = out.loss.item()
    assert losses["mean"] == losses["bound"]
    for name, (a, b) in zip("qk", zip(grads["mean"], grads["bound"])):
        assert a.abs().sum() > 0 and b.abs().sum() > 0, name
        assert (a - b).abs().max() > 1e-2 * a.abs().max(), name


def test_ssa_attention_distils_the_bound_of_a_per_token_route():
    """ssa_attention given a per-token route (route_q, route_k) with distill_score=bound: the router's gradient is
    the loop loss's with the blocks' mean query and their keys' min / max (block_minmax of route_k)."""
    t, hidden = 160, 12
    cfg = SSAConfig(**SMALL, routing="distill", distill_blocks=0, distill_weight=1.0, distill_score="bound")
    q, k = qk(1, 4, 2, t, 8, seed=23)
    v = torch.randn(1, 2, t, 8, generator=torch.Generator().manual_seed(24))
    x = torch.randn(1, t, hidden, generator=torch.Generator().manual_seed(25), dtype=torch.float64)
    proj = torch.nn.Linear(hidden, 2 * 2 * 8, dtype=torch.float64)

    def route():
        return proj(x).view(1, t, 2, 2, 8).permute(2, 0, 3, 1, 4)  # (q|k, Bt, Hkv, T, D)

    rq, rk = route()
    out = ssa_attention(q.double(), k.double(), v.double(), cfg, route=(rq, rk))
    got = torch.autograd.grad(out.sum(), proj.weight)[0]
    rq, rk = route()
    blocks = distill_query_blocks(t, cfg, q.device)
    qm, km = block_means(rq, 16), block_means(rk, 16)
    want = torch.autograd.grad(loop_loss(q, k, qm, km, cfg, None, blocks, bounds=block_minmax(rk, 16)), proj.weight)
    assert want[0].abs().sum() > 0
    torch.testing.assert_close(got, want[0], rtol=1e-4, atol=1e-7)  # the target's softmax is fp32


@pytest.mark.parametrize("target", ["attended", "true_distance"])
def test_ssa_attention_distils_toward_the_chosen_target(target):
    """ssa_attention with far blocks (far_distance's two q/k pairs) and routing=distill: the router's gradient
    is that of the loop loss whose target scores far keys with q_far . k_far (attended) or every key with the
    rotated q . k (true_distance)."""
    t, hidden = 160, 12
    cfg = SSAConfig(**SMALL, routing="distill", distill_blocks=0, distill_weight=1.0, distill_target=target)
    q, k = qk(1, 4, 2, t, 8, seed=13)
    qf, kf = qk(1, 4, 2, t, 8, seed=14)
    v = torch.randn(1, 2, t, 8, generator=torch.Generator().manual_seed(15))
    x = torch.randn(1, t // 16, hidden, generator=torch.Generator().manual_seed(16), dtype=torch.float64)
    proj = torch.nn.Linear(hidden, 2 * 2 * 8, dtype=torch.float64)
    means = proj(x).view(1, t // 16, 2, 2, 8).permute(2, 0, 3, 1, 4)  # (q|k, Bt, Hkv, nb, D)
    out = ssa_attention(q.double(), k.double(), v.double(), cfg, route=PooledRoute(means[0], means[1], t),
                        far=(qf.double(), kf.double()))  # fmt: skip
    got = torch.autograd.grad(out.sum(), proj.weight)[0]
    means = proj(x).view(1, t // 16, 2, 2, 8).permute(2, 0, 3, 1, 4)
    blocks = distill_query_blocks(t, cfg, q.device)
    want, other = (
        torch.autograd.grad(
            loop_loss(q, k, means[0], means[1], cfg, None, blocks, far=f), proj.weight, retain_graph=True
        )[0]
        for f in ((qf, kf), None)[:: 1 if target == "attended" else -1]
    )
    assert want.abs().sum() > 0 and (want - other).abs().max() > 0.1 * want.abs().max()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)  # the target's softmax is fp32


def test_ssa_attention_on_the_triton_backend_takes_the_target_from_the_kernel(monkeypatch):
    """The layer's backend reaches the distillation target: with backend=triton the kernel computes it (counted),
    and the router's gradient is the one the reference target gives."""
    import ssa_kernels.distill.triton as distill_triton

    calls = []
    kernel = distill_triton.dense_block_mass_triton
    monkeypatch.setattr(distill_triton, "dense_block_mass_triton", lambda *a, **kw: calls.append(1) or kernel(*a, **kw))
    t = 160
    cfg = SSAConfig(**SMALL, routing="distill", distill_blocks=0, distill_weight=1.0)
    q, k = (x.to(DEV) for x in qk(1, 4, 2, t, 16, seed=17))
    v = torch.randn(1, 2, t, 16, generator=torch.Generator().manual_seed(18)).to(DEV)
    grads = {}
    for backend in ("reference", "triton"):
        g = torch.Generator().manual_seed(19)
        qm = torch.randn(1, 2, t // 16, 16, generator=g).to(DEV).requires_grad_()
        km = torch.randn(1, 2, t // 16, 16, generator=g).to(DEV).requires_grad_()
        out = ssa_attention(q, k, v, cfg, route=PooledRoute(qm, km, t), backend=backend)
        grads[backend] = torch.autograd.grad(out.sum(), (qm, km))
        assert len(calls) == (backend == "triton")
    for a, b in zip(grads["triton"], grads["reference"]):
        assert b.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_distill_query_block_sampling_draws_distinct_eligible_blocks():
    cfg = SSAConfig(**SMALL, distill_blocks=5)
    torch.manual_seed(0)
    a = distill_query_blocks(16 * 40, cfg, torch.device("cpu"))
    assert len(a) == 5 and len(set(a.tolist())) == 5 and a.min() >= 4 and a.max() < 40
    assert a.tolist() == sorted(a.tolist())
    torch.manual_seed(0)
    assert torch.equal(a, distill_query_blocks(16 * 40, cfg, torch.device("cpu")))  # the global RNG decides
    assert len(distill_query_blocks(16 * 4, cfg, torch.device("cpu"))) == 0  # nothing to rank yet


def test_distill_gradient_reaches_only_the_router():
    """Same inputs with routing=distill and routing=none: the output is bitwise equal, q/k/v gradients are
    equal, and only with distill does the router (here a linear map producing the block means) learn."""
    torch.manual_seed(4)
    t, hidden = 160, 12
    q, k = qk(1, 4, 2, t, 8, seed=5)
    v = torch.randn(1, 2, t, 8)
    x = torch.randn(1, t // 16, hidden)  # block-pooled "hidden states"
    proj = torch.nn.Linear(hidden, 2 * 2 * 8)
    results = {}
    for routing in ("distill", "none"):
        cfg = SSAConfig(**SMALL, routing=routing, distill_weight=0.5)
        qq, kk, vv = (a.clone().requires_grad_() for a in (q, k, v))
        proj.zero_grad()
        means = proj(x).view(1, t // 16, 2, 2, 8).permute(2, 0, 3, 1, 4)  # (q|k, Bt, Hkv, nb, D)
        out = ssa_attention(qq, kk, vv, cfg, route=PooledRoute(means[0], means[1], t))
        out.pow(2).sum().backward()
        results[routing] = (out.detach(), qq.grad, kk.grad, vv.grad, proj.weight.grad)
    d, n = results["distill"], results["none"]
    assert torch.equal(d[0], n[0])
    for a, b in zip(d[1:4], n[1:4]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert n[4] is None or n[4].abs().sum() == 0
    assert d[4].abs().sum() > 0


def test_distill_trains_the_router_during_a_dense_warmup():
    """block_retrieval with every block routed for the first 110 steps (no routing contested, so
    straight-through has nothing to learn from): distillation still trains the router, which then finds
    the needle block at the 2-block budget; straight-through's router moves only by weight decay."""
    warm = train_block_retrieval("distill", steps=110, seed=0, eval_every=110, dense_steps=110)
    first, last = warm[0], warm[-1]
    assert first["hit_rate"] < 0.6 and first["accuracy"] < 0.15, first
    assert last["hit_rate"] >= 0.85 and last["router_change"] > 0.05, warm
    st = train_block_retrieval("straight_through", steps=20, seed=0, eval_every=20, dense_steps=20)
    assert st[-1]["router_change"] < 1e-3 and st[-1]["hit_rate"] < 0.6, st  # AdamW's decay: ~5e-5


def test_distill_config_errors_name_the_keys():
    with pytest.raises(ValueError, match="attention.router=learned"):
        SSAConfig(routing="distill", router="attention").validate()
    with pytest.raises(ConfigError, match=r"attention\.ssa\.distill_target='far'.*attended"):
        to_config(compose_cfg(["attention=ssa", "attention.ssa.distill_target=far"]))
    with pytest.raises(ConfigError, match=r"attention\.ssa\.distill_score='max'.*bound"):
        to_config(compose_cfg(["attention=ssa", "attention.ssa.distill_score=max"]))
    with pytest.raises(ConfigError, match=r"attention\.ssa\.distill_rows='sum'.*max"):
        to_config(compose_cfg(["attention=ssa", "attention.ssa.distill_rows=sum"]))
    with pytest.raises(ConfigError, match=r"attention\.ssa\.distill_blocks"):
        to_config(compose_cfg(["attention=ssa", "attention.ssa.routing=distill", "attention.ssa.distill_blocks=-1"]))
    with pytest.raises(ConfigError, match=r"attention\.ssa\.routing=distill.*parallel=ring"):
        to_config(compose_cfg(["attention=ssa", "attention.ssa.routing=distill", "parallel=ring"]))


def _rows(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _routers(run_dir):
    files = sorted(Path(run_dir).glob("checkpoints/step_*/model/*.safetensors"))
    tensors = {}
    for f in files:
        tensors.update({n: t for n, t in load_file(str(f)).items() if ".ssa_router." in n})
    assert tensors, files
    return tensors


def test_training_with_distill_trains_only_the_router_signal(tmp_path, cache_dir):
    """Through the trainer (grad_accum 2, SSA on 4 blocks of 16 tokens + 1 routed): step 1's loss is the
    same as with routing=none (the forward is untouched), and the saved routers differ (with none they
    keep their initialisation, the attention's projections)."""
    small = {"block_size": 8, "topk_blocks": 1, "local_window": 16, "top_nodes": 4, "distill_blocks": 0}
    common = ["attention=ssa", *(f"attention.ssa.{k}={v}" for k, v in small.items())]
    common += ["train.steps=3", "train.grad_accum=2", "train.ckpt_every=0"]
    run_inprocess(tmp_path / "distill", [*common, "attention.ssa.routing=distill"], cache_dir)
    run_inprocess(tmp_path / "none", [*common, "attention.ssa.routing=none"], cache_dir)
    d, n = _rows(tmp_path / "distill"), _rows(tmp_path / "none")
    assert d[0]["loss"] == n[0]["loss"]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in d)
    rd, rn = _routers(tmp_path / "distill"), _routers(tmp_path / "none")
    assert rd.keys() == rn.keys()
    assert any(not torch.equal(rd[name], rn[name]) for name in rd)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("corpus-cache"))


def test_block_retrieval_probe_takes_other_ssa_settings():
    """train_block_retrieval(ssa=...) (scripts/length_generalisation.py --ssa) builds the model with them."""
    _, model = train_block_retrieval("distill", steps=1, eval_every=1, return_model=True, ssa={"beam_min": 3})
    assert model.config.ssa["beam_min"] == 3 and model.config.ssa["routing"] == "distill"
    with pytest.raises(TypeError):
        train_block_retrieval("distill", steps=1, ssa={"no_such_field": 1})
