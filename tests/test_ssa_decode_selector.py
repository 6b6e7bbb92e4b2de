"""Fast decoding (``ssa_kernels/decode/fast.py``) against the reference ``ssa_decode_step``, token by token.

Each case decodes consecutive tokens that cross block boundaries and pyramid height changes, from a prompt
(or from nothing), with the reference state stepping alongside: same selections (or, at an fp32 near-tie,
routed sets of equal fp64 scores), outputs within tolerance, and the incrementally updated pyramid equal bit
for bit to one built by ``from_prefill`` at the same length. Outputs go into NaN-filled buffers, caches are
NaN past the tokens written, and the attention's split-K partials are NaN-filled, so an unwritten element
fails. On CPU the kernels run in Triton's interpreter (fp32/fp16 only: its bf16 tl.dot is wrong); the CUDA
tests (bf16, CUDA graph replay) are skipped there.
"""

import math

import pytest
import torch

import ssa_kernels.decode.fast as dfast
import ssa_kernels.decode.triton as dtriton
from ssa_kernels import SSAConfig
from ssa_kernels.decode import DecodeState
from ssa_kernels.decode import reference as dref
from ssa_kernels.decode.fast import DecodePyramid, SSADecodeGraph, fast_decode_step

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(autouse=True)
def poisoned_partials(monkeypatch):
    monkeypatch.setattr(dtriton, "_WORKSPACE_FILL", float("nan"))


def make_seq(bt, hq, hkv, seq_len, d, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(bt, h, seq_len, d, generator=g).to(dtype) for h in (hq, hkv, hkv))


def make_doc_ids(bt, seq_len, num_docs, seed):
    """Nondecreasing ids per row, boundaries anywhere (mid-block included)."""
    g = torch.Generator().manual_seed(seed)
    first = torch.zeros(bt, seq_len, dtype=torch.long)
    first.scatter_(1, torch.rand(bt, seq_len, generator=g).argsort(-1)[:, : num_docs - 1], 1)
    first[:, 0] = 0
    return first.cumsum(-1)


def exact_scores(ref: DecodeState, routed: torch.Tensor, group: int, d: int, t: int, cfg: SSAConfig):
    """fp64 scores [Bt, Hkv, topk] of routed blocks (-1 -> -inf) for token t: the reference's scaled query
    summary . block sum / block_size (a block's node score at level 0)."""
    n = t % cfg.block_size + 1
    q_sum = ref.query_sum / (n * group) / math.sqrt(d)  # (Bt, Hkv, D) fp64
    blocks = ref.prefix[:, :, 1:] - ref.prefix[:, :, :-1]  # (Bt, Hkv, cap, D)
    picked = blocks.gather(2, routed.clamp(min=0).unsqueeze(-1).expand(-1, -1, -1, d))  # (Bt, Hkv, topk, D)
    score = (picked @ q_sum.unsqueeze(-1)).squeeze(-1) / cfg.block_size
    return torch.where(routed >= 0, score, -math.inf)


def assert_same_selection(got, want, ref, group, d, t, cfg):
    """Equal index rows, or rows whose routed blocks (the union minus sinks and window) score equally in fp64."""
    if torch.equal(got, want):
        return
    s, w = cfg.sink_blocks, cfg.local_blocks
    blk = t // cfg.block_size
    keep = lambda x: torch.where((x >= s) & (x <= blk - w), x, -1)  # noqa: E731 - routed part of a union row
    a, b = keep(got[:, :, 0]), keep(want[:, :, 0])
    sa = exact_scores(ref, a, group, d, t, cfg).sort(-1, descending=True).values
    sb = exact_scores(ref, b, group, d, t, cfg).sort(-1, descending=True).values
    torch.testing.assert_close(sa, sb, rtol=1e-5, atol=1e-6, msg=f"token {t}: selections differ beyond a near-tie")


# bt, hq, hkv, d, prompt, steps, cfg, docs, dtype
CASES = {
    # 13 -> 37 tokens: blocks 3 -> 9, pyramid heights 1 -> 2 -> 3
    "B2-gqa4-T13+24-blk4-br2-docs-fp32": (2, 8, 2, 16, 13, 24, SSAConfig(4, 2, 3, 8, 1, top_nodes=2), 3, torch.float32),
    # mid-block prompt, no sinks, branching 3, one kv head per query head
    "B1-gqa1-T30+14-blk4-br3-fp16": (1, 2, 2, 32, 30, 14, SSAConfig(4, 3, 4, 4, 0, top_nodes=2), 0, torch.float16),
    # from nothing: the first tokens (no routed range yet), then routing
    "B2-gqa4-T0+20-blk2-br2-beam1": (2, 4, 1, 8, 0, 20, SSAConfig(2, 2, 2, 2, 1, [1], top_nodes=2), 0, torch.float32),
    # levels spanning >= 8 tokens keep every node (beam_full_span), the others 1: heights 3 -> 4 cross it
    "B1-gqa2-T40+30-blk2-br2-full-span8": (
        1,
        4,
        2,
        8,
        40,
        30,
        SSAConfig(2, 2, 2, 2, 1, [1], top_nodes=2, beam_full_span=8),
        0,
        torch.float32,
    ),
}


@pytest.mark.parametrize("fused", [True, False], ids=["commit-in-update", "commit-kernel"])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_matches_reference_token_by_token(case, fused, monkeypatch):
    """fused: the update's last program commits the rows (the default); else _commit_kernel, a launch of its own.
    The arrival count must be zero after every step (else the next step commits at the wrong arrival)."""
    monkeypatch.setattr(dfast, "COMMIT_IN_UPDATE", fused)
    bt, hq, hkv, d, prompt, steps, cfg, docs, dtype = CASES[case]
    total = prompt + steps
    cap = total + 5  # a capacity past the last token: the kernels must not depend on it
    q, k, v = make_seq(bt, hq, hkv, total, d, dtype, seed=len(case))
    doc_ids = make_doc_ids(bt, total, docs, seed=1) if docs else None
    q, k, v = q.to(DEVICE), k.to(DEVICE), v.to(DEVICE)
    doc_ids = None if doc_ids is None else doc_ids.to(DEVICE)
    head = None if doc_ids is None else doc_ids[:, :prompt]
    if prompt:
        ref = DecodeState.from_prefill(q[:, :, :prompt], k[:, :, :prompt], cfg, head)
        state = DecodePyramid.from_prefill(q[:, :, :prompt], k[:, :, :prompt], cfg, cap, head)
    else:
        ref = DecodeState.empty(bt, hkv, d, cfg, DEVICE)
        state = DecodePyramid.empty(bt, hkv, d, cap, cfg, DEVICE)
    k_cache = torch.full((bt, hkv, cap, d), float("nan"), dtype=dtype, device=DEVICE)
    v_cache = k_cache.clone()
    k_cache[:, :, :prompt], v_cache[:, :, :prompt] = k[:, :, :prompt], v[:, :, :prompt]
    ref_cfg = SSAConfig(**{**cfg.__dict__, "backend": "reference"})
    seen = []
    orig = dref._attend_rows
    for t in range(prompt, total):
        doc = None if doc_ids is None else doc_ids[:, t]
        dref._attend_rows = lambda *a: seen.append(a[3]) or orig(*a)
        try:
            want = dref.ssa_decode_step(q[:, :, t : t + 1], k[:, :, : t + 1], v[:, :, : t + 1], ref, ref_cfg,
                                        doc_id=doc)  # fmt: skip
        finally:
            dref._attend_rows = orig
        out = torch.full_like(q[:, :, :1], float("nan"))
        got = fast_decode_step(q[:, :, t : t + 1], k[:, :, t], v[:, :, t], k_cache, v_cache, state, cfg,
                               doc_id=doc, out=out)  # fmt: skip
        assert got is out
        assert not state.arrivals.any()
        assert_same_selection(state.indices, seen[-1], ref, hq // hkv, d, t, cfg)
        tol = 2e-3 if dtype == torch.float16 else 1e-5
        torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol, msg=f"token {t}")
    assert torch.equal(k_cache[:, :, :total], k) and torch.equal(v_cache[:, :, :total], v)
    assert state.length.tolist() == [total] * bt and state.num_tokens == total
    assert torch.equal(state.doc_start, ref.doc_start) and torch.equal(state.block_lo, ref.block_lo)
    # The pyramid grown token by token is the one built from the whole prompt, bit for bit.
    fresh = DecodePyramid.from_prefill(q, k, cfg, cap, doc_ids)
    partial = total % cfg.block_size != 0  # else decoding still holds the finished block's sums (reset next token)
    for name in ("lev", "ps", "key_acc", "query_acc") if partial else ("lev", "ps"):
        assert torch.equal(getattr(state, name), getattr(fresh, name)), name


def test_capacity_is_enforced():
    cfg = SSAConfig(4, 2, 2, 4, 1, top_nodes=2)
    q, k, v = make_seq(1, 2, 1, 8, 8, torch.float32, seed=0)
    q, k, v = q.to(DEVICE), k.to(DEVICE), v.to(DEVICE)
    with pytest.raises(ValueError, match="capacity"):
        DecodePyramid.from_prefill(q, k, cfg, capacity=8)
    state = DecodePyramid.from_prefill(q[:, :, :7], k[:, :, :7], cfg, capacity=8)
    kc, vc = torch.zeros(1, 1, 8, 8, device=DEVICE), torch.zeros(1, 1, 8, 8, device=DEVICE)
    fast_decode_step(q[:, :, 7:8], k[:, :, 7], v[:, :, 7], kc, vc, state, cfg)
    with pytest.raises(ValueError, match="full"):
        fast_decode_step(q[:, :, 7:8], k[:, :, 7], v[:, :, 7], kc, vc, state, cfg)


@CUDA
@pytest.mark.parametrize("with_doc", [False, True])
def test_cuda_graph_replay_equals_steps_and_reference(with_doc):
    """bf16, the default config's shape of heads: a captured step replayed over 300 tokens (block boundaries,
    a pyramid height change at 64 blocks) equals stepping from Python and selects as the reference."""
    cfg = SSAConfig(block_size=16, local_window=64, topk_blocks=8, top_nodes=64)
    bt, hq, hkv, d, prompt, steps = 2, 32, 8, 128, 900, 300  # blocks 56 -> 75: heights 1 -> 2
    total, cap = prompt + steps, prompt + steps + 7
    q, k, v = (x.cuda() for x in make_seq(bt, hq, hkv, total, d, torch.bfloat16, seed=3))
    doc_ids = make_doc_ids(bt, total, 4, seed=2).cuda() if with_doc else None
    head = None if doc_ids is None else doc_ids[:, :prompt]

    def fresh():
        state = DecodePyramid.from_prefill(q[:, :, :prompt], k[:, :, :prompt], cfg, cap, head)
        kc = torch.zeros(bt, hkv, cap, d, dtype=torch.bfloat16, device="cuda")
        vc = torch.zeros_like(kc)
        kc[:, :, :prompt], vc[:, :, :prompt] = k[:, :, :prompt], v[:, :, :prompt]
        return state, kc, vc

    s1, kc1, vc1 = fresh()
    s2, kc2, vc2 = fresh()
    graph = SSADecodeGraph(s2, kc2, vc2, cfg, q_heads=hq, with_doc=with_doc)
    ref = DecodeState.from_prefill(q[:, :, :prompt], k[:, :, :prompt], cfg, head)
    ref_cfg = SSAConfig(**{**cfg.__dict__, "backend": "reference"})
    seen = []
    orig = dref._attend_rows
    for t in range(prompt, total):
        doc = None if doc_ids is None else doc_ids[:, t]
        a = fast_decode_step(q[:, :, t : t + 1], k[:, :, t], v[:, :, t], kc1, vc1, s1, cfg, doc_id=doc)
        b = graph(q[:, :, t : t + 1], k[:, :, t], v[:, :, t], doc)
        assert torch.equal(a, b), f"token {t}: graph replay differs from the step"
        assert torch.equal(s1.indices, s2.indices)
        if t % 7 == 0 or t == total - 1:  # the reference is slow: every 7th token
            for tt in range(ref.length, t + 1):
                dref._attend_rows = lambda *x: seen.append(x[3]) or orig(*x)
                try:
                    want = dref.ssa_decode_step(q[:, :, tt : tt + 1], k[:, :, : tt + 1], v[:, :, : tt + 1], ref,
                                                ref_cfg, doc_id=None if doc_ids is None else doc_ids[:, tt])  # fmt: skip
                finally:
                    dref._attend_rows = orig
            assert_same_selection(s1.indices, seen[-1], ref, hq // hkv, d, t, cfg)
            torch.testing.assert_close(a.float(), want.float(), rtol=2e-2, atol=2e-2)
    assert torch.equal(kc1, kc2) and torch.equal(s1.lev, s2.lev) and torch.equal(s1.ps, s2.ps)
