"""Triton SSA block-sparse attention against the PyTorch reference (``sparse_attention`` on fp32 inputs).

Forward (out, lse) and gradients (q, k, v, block_bias) are compared by relative error ||a - b|| / ||b||.
The kernels run with ``POISON`` set, so every output and workspace starts as NaN and an element no kernel
writes fails the finiteness checks. On CPU the kernels run in Triton's interpreter (tests/conftest.py), in
fp32 and fp16 only (the interpreter's bf16 tl.dot is wrong); the bf16 case runs only with CUDA.
"""

import math
import sys
import zlib
from pathlib import Path

import pytest
import torch

import ssa_kernels.attention.triton as tri
from ssa_kernels.attention.reference import sparse_attention
from ssa_kernels.attention.triton import _sparse_attention_triton, sparse_attention_triton

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/ is not a package
from sparse_inputs import random_docs, random_indices, relerr  # noqa: E402

TOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 1e-2}
# The block-bias gradient sums p * (dp - delta) over a block's query-key pairs, terms that largely cancel; in fp16 /
# bf16 delta comes from the rounded output, an absolute error per entry that does not shrink with |dbias|, so its
# relative error runs ~10x the others' (fp16: median 0.13x of 5e-3, worst 1.1x in 1,649 random draws; audit,
# 2026-12-03). fp32 cases check it at 1e-4.
DBIAS_TOL = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 2e-2}
DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    monkeypatch.setattr(tri, "POISON", True)


def run_both(
    q, k, v, indices, bs, g, doc_ids=None, bias=None, kv_split=None, public=False, lse_only=False
) -> tuple[dict, dict]:
    """Kernel in q's dtype vs reference in fp32 on the same (rounded) inputs; returns (kernel, reference)
    dicts of out, lse and the gradients of a random linear loss in out and lse."""
    dtype = q.dtype
    do = torch.randn(q.shape, generator=g).to(dtype)
    dl = torch.randn(q.shape[:3], generator=g)
    leaves = [x.detach().to(DEV).requires_grad_() for x in (q, k, v)]
    ref_leaves = [x.detach().float().to(DEV).requires_grad_() for x in (q, k, v)]
    if bias is not None:
        leaves.append(bias.detach().to(DEV).requires_grad_())
        ref_leaves.append(bias.detach().float().to(DEV).requires_grad_())
    idx = indices.to(DEV)
    docs = doc_ids.to(DEV) if doc_ids is not None else None
    b_k = leaves[3] if bias is not None else None
    b_r = ref_leaves[3] if bias is not None else None
    if public:
        out, lse = sparse_attention_triton(*leaves[:3], idx, bs, doc_ids=docs, block_bias=b_k)
    else:
        out, lse = _sparse_attention_triton(*leaves[:3], idx, bs, doc_ids=docs, block_bias=b_k, kv_split=kv_split)
    ref_out, ref_lse = sparse_attention(*ref_leaves[:3], idx, bs, doc_ids=docs, block_bias=b_r)
    dl_d = dl.to(DEV)
    loss = (lse * dl_d).sum() if lse_only else (out.float() * do.float().to(DEV)).sum() + (lse * dl_d).sum()
    ref_loss = (ref_lse * dl_d).sum() + (0 if lse_only else (ref_out * do.float().to(DEV)).sum())
    grads = torch.autograd.grad(loss, leaves)
    ref_grads = torch.autograd.grad(ref_loss, ref_leaves)
    names = ["q", "k", "v", "bias"][: len(leaves)]
    got = {"out": out, "lse": lse, **{"d" + n: x for n, x in zip(names, grads)}}
    ref = {"out": ref_out, "lse": ref_lse, **{"d" + n: x for n, x in zip(names, ref_grads)}}
    return got, ref


def assert_close(got: dict, ref: dict, dtype: torch.dtype) -> None:
    """Kernel vs fp32 reference: relative error within TOL[dtype] (DBIAS_TOL for the bias gradient)."""
    assert got["out"].dtype == ref["out"].dtype or got["out"].dtype in (torch.float16, torch.bfloat16)
    assert got["lse"].dtype == torch.float32 and got["lse"].shape == ref["lse"].shape
    # lse: -inf exactly where the reference has -inf (rows with no visible key), close elsewhere.
    inf_ref = torch.isinf(ref["lse"])
    assert torch.equal(torch.isinf(got["lse"]), inf_ref), "lse -inf pattern differs"
    assert not torch.isnan(got["lse"]).any()
    for name, a in got.items():
        b = ref[name]
        assert a.shape == b.shape, name
        if name == "lse":
            a, b = a[~inf_ref], b[~inf_ref]
        assert torch.isfinite(a).all(), f"{name}: non-finite (unwritten or NaN) elements"
        err = relerr(a, b)
        assert err <= (DBIAS_TOL if name == "dbias" else TOL)[dtype], (name, err)


def make_inputs(bt, hq, hkv, t, d, g, dtype):
    q = torch.randn(bt, hq, t, d, generator=g).to(dtype)
    k = torch.randn(bt, hkv, t, d, generator=g).to(dtype)
    v = torch.randn(bt, hkv, t, d, generator=g).to(dtype)
    return q, k, v


def check_ragged_docs_bias(monkeypatch, seed, bs, dtype, config, t=90, hf_layout=False):
    """Kernel vs reference with ``config`` as tri.CONFIG_OVERRIDE on one case: Bt 2, GQA 4 (Hq 8, Hkv 2), D 64,
    ragged T, up to 3 listed blocks a row, 3 documents, block bias, CSR pieces of kv_split=2 entries. With
    ``hf_layout``, q/k/v are [Bt, H, T, D] views of [Bt, T, H, D] storage (HF's layout)."""
    monkeypatch.setattr(tri, "CONFIG_OVERRIDE", config)
    g = torch.Generator().manual_seed(seed)
    bt, hq, hkv, d, s = 2, 8, 2, 64, 3
    q, k, v = make_inputs(bt, hq, hkv, t, d, g, dtype)
    if hf_layout:
        q, k, v = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v))
        assert not q.is_contiguous()
    indices = random_indices(bt, hkv, -(-t // bs), s, g)
    docs = random_docs(bt, t, 3, g)
    bb = 0.5 * torch.randn(indices.shape, generator=g)
    got, ref = run_both(q, k, v, indices, bs, g, doc_ids=docs, bias=bb, kv_split=2)
    assert_close(got, ref, dtype)


# (Bt, Hq, Hkv, T, D, block, S, dtype, doc, bias): GQA 1/4/8, D 64/128, ragged T, Bt > 1, docs and bias.
CASES = [
    (1, 2, 2, 100, 64, 16, 4, torch.float32, False, False),  # G=1, ragged (100 = 6*16 + 4)
    (2, 4, 1, 128, 64, 16, 5, torch.float32, True, True),  # G=4, Bt=2, docs + bias
    (1, 8, 1, 77, 128, 16, 3, torch.float32, False, True),  # G=8, D=128, ragged
    (2, 8, 2, 96, 128, 16, 6, torch.float16, True, False),  # G=4, fp16, docs
    (1, 2, 2, 64, 64, 32, 2, torch.float16, False, True),  # G=1, block 32, fp16, bias
]


@pytest.mark.parametrize(
    "bt,hq,hkv,t,d,bs,s,dtype,doc,bias",
    CASES,
    ids=[
        f"B{c[0]}-Hq{c[1]}-Hkv{c[2]}-T{c[3]}-D{c[4]}-BS{c[5]}-S{c[6]}-{str(c[7])[6:]}-doc{c[8]:d}-bias{c[9]:d}"
        for c in CASES
    ],
)
def test_matches_reference(bt, hq, hkv, t, d, bs, s, dtype, doc, bias):
    # a stable seed per case (hash() of a str is salted per process: a failure could not be reproduced)
    g = torch.Generator().manual_seed(zlib.crc32(repr((bt, hq, hkv, t, d, bs, s, str(dtype), doc, bias)).encode()))
    q, k, v = make_inputs(bt, hq, hkv, t, d, g, dtype)
    nb = -(-t // bs)
    indices = random_indices(bt, hkv, nb, s, g)
    docs = random_docs(bt, t, 3, g) if doc else None
    bb = 0.5 * torch.randn(indices.shape, generator=g) if bias else None
    got, ref = run_both(q, k, v, indices, bs, g, doc_ids=docs, bias=bb, kv_split=3)
    assert_close(got, ref, dtype)


@pytest.mark.parametrize("order", ["lpt", "kb"])
def test_kv_work_orders(monkeypatch, order):
    """Both orders of the dk/dv work items (longest first; long pieces first, then key-block order)."""
    monkeypatch.setattr(tri, "KV_ORDER", order)
    g = torch.Generator().manual_seed(3)
    bt, hq, hkv, t, d, bs, s = 2, 4, 2, 90, 64, 16, 4
    q, k, v = make_inputs(bt, hq, hkv, t, d, g, torch.float32)
    q = 4 * q  # large logits: a wide range of softmax weights
    indices = random_indices(bt, hkv, -(-t // bs), s, g)
    docs = random_docs(bt, t, 2, g)
    bb = 0.5 * torch.randn(indices.shape, generator=g)
    got, ref = run_both(q, k, v, indices, bs, g, doc_ids=docs, bias=bb, kv_split=2)
    assert_close(got, ref, torch.float32)


@pytest.mark.parametrize("split", [None, 3])
def test_kv_work_lists_every_entry_once_by_key_block(split):
    """The CSR work items, checked entry by entry: each key block's pieces together list exactly the entries of
    indices that name it, once each, in ascending query block; [start, mid) holds those at or above the diagonal
    (query block <= key block: the diagonal, or a block listed by mistake, which need the causal mask), [mid, end)
    the rest; split pieces get consecutive partial slots, recorded in red. Indices with padding, a wrong entry
    above the diagonal and Bt, Hkv > 1."""
    g = torch.Generator().manual_seed(11)
    bt, hkv, nb, s = 2, 3, 9, 5
    idx = random_indices(bt, hkv, nb, s, g)
    idx[1, 2, 3, -1] = 6  # listed by mistake: a key block after its query block
    csr, items, red, n_slots = tri._kv_work(idx, split)
    flat = idx.view(-1)
    want = {}  # key block (flat) -> [(query block, flat position)]
    for pos in range(flat.numel()):
        if flat[pos] >= 0:
            bh, i = pos // (nb * s), (pos // s) % nb
            want.setdefault(bh * nb + int(flat[pos]), []).append((i, pos))
    got, slots = {}, []
    for blk, start, mid, end, slot in items.tolist():
        assert start <= mid <= end
        for e in range(start, end):
            pos = int(csr[e])
            i, kb = (pos // s) % nb, blk % nb
            assert int(flat[pos]) == kb and pos // (nb * s) == blk // nb
            assert (i <= kb) == (e < mid), (blk, e, i)
            got.setdefault(blk, []).append((e, i, pos))
        if slot >= 0:
            slots.append((blk, slot))
    assert {b: sorted((i, p) for _, i, p in v) for b, v in got.items()} == {b: sorted(v) for b, v in want.items()}
    for v in got.values():  # ascending query block along the CSR positions of a key block
        assert [i for _, i, _ in sorted(v)] == sorted(i for _, i, _ in v)
    assert n_slots == len(slots) and sorted(x for _, x in slots) == list(range(n_slots))
    for blk, first, pieces in red.tolist():
        assert sorted(x for b, x in slots if b == blk) == list(range(first, first + pieces))
    if split is not None:
        assert n_slots > 0  # the split did happen (the diagonal and popular blocks have > 3 entries)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("bs,bm_kv,hf_layout", [(16, 16, False), (32, 16, False), (16, 16, True)])
def test_tma_loads(monkeypatch, dtype, bs, bm_kv, hf_layout):
    """The bulk-tensor-copy loads (K/V in the forward and dQ pass, q/dO slices of BLOCK_M <= block rows in the
    dK/dV pass) on ragged T and Bt > 1, where a box crosses T; also on HF's layout ([Bt, T, H, D] storage
    seen as [Bt, H, T, D]), whose strides the descriptors take as they are."""
    used = []
    flat_desc = tri._tensor_desc
    monkeypatch.setattr(tri, "_tensor_desc", lambda *a: used.append(flat_desc(*a)[1]) or flat_desc(*a))
    config = {"fwd": {"TMA": 1}, "dq": {"TMA": 1}, "dkdv": {"TMA": 1, "BLOCK_M": bm_kv}}
    check_ragged_docs_bias(monkeypatch, 19 + bs, bs, dtype, config, hf_layout=hf_layout)
    assert len(used) == 6 and all(used)  # fwd k, v; dq k, v; dkdv q, dO


@pytest.mark.parametrize("tma", [0, 1])
@pytest.mark.parametrize("bs,bn", [(32, 16), (64, 16)])
def test_key_subtiles(monkeypatch, tma, bs, bn):
    """The forward and dQ loops walking a listed block BLOCK_N < block keys at a time (the 128-key blocks' dQ
    configuration): causal diagonal sub-tiles wholly in some rows' future, the block bias and its gradient
    summed over the sub-tiles, documents, ragged T, with and without bulk-tensor-copy loads."""
    config = {"fwd": {"TMA": tma, "BLOCK_N": bn}, "dq": {"TMA": tma, "BLOCK_N": bn}}
    check_ragged_docs_bias(monkeypatch, 23 + bs + tma, bs, torch.float32, config, t=150)
    assert tri._config("dq", 4, bs, 64, torch.device("cpu"))["BLOCK_N"] == bn  # the override was in effect


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("tma", [0, 1])
def test_dkdv_keys_first(monkeypatch, dtype, tma):
    """The dK/dV pass with keys as the M side of its products (KT: S^T = K Q^T, dP^T = V dO^T): causal and
    document masks transposed, bias, split CSR pieces, ragged T, GQA 4."""
    check_ragged_docs_bias(monkeypatch, 29 + tma, 32, dtype, {"dkdv": {"KT": 1, "TMA": tma, "BLOCK_M": 16}})


def test_public_function_auto_split():
    """The public entry point (automatic CSR piece length) on a full causal budget."""
    g = torch.Generator().manual_seed(5)
    bt, hq, hkv, t, d, bs = 1, 4, 2, 64, 64, 16
    q, k, v = make_inputs(bt, hq, hkv, t, d, g, torch.float32)
    nb = t // bs
    j = torch.arange(nb)
    indices = torch.where(j[None, :] <= j[:, None], j[None, :], -1).expand(bt, hkv, nb, nb).clone()
    got, ref = run_both(q, k, v, indices, bs, g, public=True)
    assert_close(got, ref, torch.float32)


@pytest.mark.parametrize("kv_split", [1, 2, None])
def test_every_query_block_selects_the_sink(kv_split):
    """Stress for the CSR balancing: every query block lists block 0 (and its diagonal), so block 0's list
    is as long as nb and is cut into pieces of kv_split entries whose fp32 partials are reduced."""
    g = torch.Generator().manual_seed(7 + (kv_split or 0))
    bt, hq, hkv, t, d, bs = 1, 4, 2, 192, 64, 16
    nb = t // bs
    q, k, v = make_inputs(bt, hq, hkv, t, d, g, torch.float32)
    i = torch.arange(nb)
    rows = torch.stack([torch.zeros_like(i), i], 1)  # [nb, 2]: sink, diagonal
    rows[0, 1] = -1  # block 0: the sink is its diagonal
    indices = rows.expand(bt, hkv, nb, 2).clone()
    bb = 0.5 * torch.randn(indices.shape, generator=g)
    got, ref = run_both(q, k, v, indices, bs, g, bias=bb, kv_split=kv_split)
    assert_close(got, ref, torch.float32)


def test_a_late_block_far_above_the_first_rescales():
    """The forward's online softmax must move its reference max when a later listed block scores far above the
    earlier ones: here ~230 log2 units above (2^230 overflows fp32), with fp16 P as well. An accumulator left on the
    first block's max turns to inf / NaN."""
    g = torch.Generator().manual_seed(17)
    bt, hq, hkv, t, d, bs = 1, 4, 2, 64, 64, 16
    nb = t // bs
    q = 1.0 + 0.1 * torch.randn(bt, hq, t, d, generator=g)
    k = 0.1 * torch.randn(bt, hkv, t, d, generator=g)
    k[:, :, 2 * bs : 3 * bs] += 20.0  # block 2: q . k ~ 1,280, x 1/8 x log2(e) ~ 230 log2 units above block 0
    v = torch.randn(bt, hkv, t, d, generator=g)
    i = torch.arange(nb)
    indices = torch.where(torch.arange(nb)[None, :] <= i[:, None], torch.arange(nb)[None, :], -1)  # 0 .. i, ascending
    indices = indices.expand(bt, hkv, nb, nb).clone()
    for dtype in (torch.float32, torch.float16):
        got, ref = run_both(q.to(dtype), k.to(dtype), v.to(dtype), indices, bs, g)
        assert_close(got, ref, dtype)


def test_rows_without_visible_keys_and_unlisted_blocks():
    """Query blocks whose list is empty or lacks the diagonal: out 0, lse -inf, zero gradients, no NaN.
    Key blocks nobody lists get zero dk/dv (written, not left as poison)."""
    g = torch.Generator().manual_seed(11)
    bt, hq, hkv, t, d, bs, s = 1, 4, 2, 80, 64, 16, 3
    q, k, v = make_inputs(bt, hq, hkv, t, d, g, torch.float32)
    nb = t // bs
    indices = torch.full((bt, hkv, nb, s), -1, dtype=torch.int64)
    indices[0, 0, 1, :2] = torch.tensor([0, 1])
    indices[0, 0, 3, :1] = torch.tensor([1])  # no diagonal: block 3 of head 0 sees nothing... except block 1
    indices[0, 0, 4, :3] = torch.tensor([0, 2, 4])
    indices[0, 1, 2, :1] = torch.tensor([2])
    # head 0: blocks 0 and 2 empty; head 1: only block 2 listed; block 3 listed nowhere
    bb = 0.5 * torch.randn(indices.shape, generator=g)
    got, ref = run_both(q, k, v, indices, bs, g, bias=bb, kv_split=2)
    assert_close(got, ref, torch.float32)
    out, lse = got["out"].cpu(), got["lse"].cpu()
    assert (out[:, 0:2, 0:bs] == 0).all() and torch.isneginf(lse[:, 0:2, 0:bs]).all()
    assert (got["dq"][:, 0:2, 0:bs] == 0).all()
    assert (got["dk"][:, :, 3 * bs : 4 * bs] == 0).all() and (got["dv"][:, :, 3 * bs : 4 * bs] == 0).all()


def test_lse_only_loss_and_strided_inputs():
    """A loss through lse alone (grad_out is None), with q/k/v as transposed views of [Bt, T, H, D]."""
    g = torch.Generator().manual_seed(13)
    bt, hq, hkv, t, d, bs, s = 2, 4, 2, 70, 64, 16, 3
    q, k, v = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in make_inputs(bt, hq, hkv, t, d, g, torch.float32))
    assert not q.is_contiguous()
    indices = random_indices(bt, hkv, -(-t // bs), s, g)
    got, ref = run_both(q, k, v, indices, bs, g, kv_split=2, lse_only=True)
    assert_close(got, ref, torch.float32)


@pytest.mark.parametrize("dtype,bs,hf_layout", [(torch.float32, 16, False), (torch.float16, 32, True)])
def test_block_add_kernel_matches_the_reference(dtype, bs, hf_layout):
    """The routing gradient's broadcast add (``tri._add_per_block``, a Triton kernel) against ``routing``'s torch
    reference: GQA 3, batch 2, ragged T (a partial last block), HF's strided layout; every row gets its own block's
    and kv head's vector (a wrong group, block or row offset fails)."""
    from ssa_kernels.attention.routing import _add_per_block as reference

    g = torch.Generator().manual_seed(11 + bs)
    bt, h, hkv, t, d = 2, 6, 2, 3 * bs + 5, 32
    x = torch.randn(bt, h, t, d, generator=g).to(dtype)
    if hf_layout:
        x = x.transpose(1, 2).contiguous().transpose(1, 2)
    vec = torch.randn(bt, hkv, -(-t // bs), d, generator=g)
    want = x.clone()
    reference(want, vec, bs)
    got = x.clone().to(DEV)
    tri._add_per_block(got, vec.to(DEV), bs)
    assert relerr(got.cpu(), want) < (1e-6 if dtype == torch.float32 else 1e-3)
    assert relerr(want, x) > 0.1  # the add is there


@pytest.mark.parametrize("want_q,want_level", [(True, True), (True, False), (False, True)])
def test_scores_grad_kernel_matches_the_reference(monkeypatch, want_q, want_level):
    """The routing gradient's block-mean gradients as one Triton kernel (``tri._scores_grad``: a gather-sum for the
    query side, atomic adds for the key side) against ``scores_backward``: batch 2, 3 kv heads, padding slots (-1),
    zero weights, a node picked by several rows (the atomics must add, not overwrite), d_q poisoned."""
    from ssa_kernels.selector.reference import scores_backward

    monkeypatch.setattr(tri, "POISON", True)
    g = torch.Generator().manual_seed(17 + 2 * want_q + want_level)
    bt, hkv, nb, n, m, d = 2, 3, 10, 7, 6, 32
    q_sum, level = torch.randn(bt, hkv, nb, d, generator=g), torch.randn(bt, hkv, n, d, generator=g)
    node = torch.randint(0, n, (bt, hkv, nb, m), generator=g)
    node[:, :, :, 0] = 2  # every row picks node 2
    node[0, 1, 4, 3:] = -1
    w = torch.randn(bt, hkv, nb, m, generator=g)
    w[node < 0] = 0.0
    w[1, 2, :, 1] = 0.0
    want = scores_backward(q_sum, level, node, w, 2, want_q, want_level)
    got = tri._scores_grad(q_sum.to(DEV), level.to(DEV), node.to(DEV), w.to(DEV), 2, want_q, want_level)
    for x, y in zip(got, want):
        assert (x is None) == (y is None)
        if y is not None:
            torch.testing.assert_close(x.cpu(), y, rtol=1e-5, atol=1e-5)
            assert y.abs().max() > 0.1


@pytest.mark.skipif(not tri._gluon.HAVE_GLUON, reason="this Triton has no Gluon")
def test_row_stats_pack_lse_in_log2_units_and_delta_for_the_dkdv_load_warp():
    """``gluon.row_stats``, what the Gluon dK/dV pass's load warp brings with each q / dO slice: per (batch, query
    head) a row of lse in log2 units (+inf for an empty row's -inf and past T, so p = 0 there) and a row of delta
    (0 past T), T padded to 64. Every element is checked, so a wrong row, head or an unwritten pad fails."""
    g = torch.Generator().manual_seed(5)
    lse, delta = torch.randn(2, 3, 100, generator=g), torch.randn(2, 3, 100, generator=g)
    lse[1, 2, 7] = float("-inf")
    st = tri._gluon.row_stats(lse, delta)
    assert st.shape == (2 * 3 * 2, 128) and st.dtype == torch.float32
    st = st.view(2, 3, 2, 128)
    want = torch.where(lse == float("-inf"), float("inf"), lse / math.log(2))
    torch.testing.assert_close(st[:, :, 0, :100], want, rtol=1e-6, atol=0)
    assert torch.equal(st[:, :, 1, :100], delta)
    assert bool((st[:, :, 0, 100:] == float("inf")).all()) and bool((st[:, :, 1, 100:] == 0).all())


def test_config_override_rejects_unknown_keys(monkeypatch):
    """A misspelt tuning key must not silently time the defaults under a variant's name."""
    monkeypatch.setattr(tri, "CONFIG_OVERRIDE", tri.parse_config_override("fwd:LAZZY=1"))
    q = torch.randn(1, 2, 32, 16)
    with pytest.raises(ValueError, match="LAZZY"):
        sparse_attention_triton(q, q, q, torch.zeros(1, 2, 2, 1, dtype=torch.int64), 16)
    assert tri.parse_config_override("fwd:num_stages=3 dkdv:BLOCK_M=128,num_warps=8") == {
        "fwd": {"num_stages": 3},
        "dkdv": {"BLOCK_M": 128, "num_warps": 8},
    }


@pytest.mark.skipif(not tri._gluon.HAVE_GLUON, reason="this Triton has no Gluon")
def test_gluon_shapes_that_do_not_fit_name_their_config_keys():
    """The Gluon forward's and dQ pass's consumer shapes that would not fit the registers (2 heads with 128-key steps
    or with the overlap; the dQ overlap, or more than 2 stages, at 128-key steps) are refused before anything runs, naming
    the keys to fix."""
    q = torch.zeros(1, 4, 256, 128, dtype=torch.bfloat16)
    k = torch.zeros(1, 1, 256, 128, dtype=torch.bfloat16)
    idx = torch.zeros(1, 1, 2, 1, dtype=torch.int64)
    for heads, keys, overlap in [(2, 128, False), (2, 64, True), (3, 64, False), (1, 96, False)]:
        with pytest.raises(ValueError, match="GL_HEADS.*GL_KEYS.*CONFIG_OVERRIDE"):
            tri._gluon.forward(q, k, k, idx, None, None, None, None, q, None, 128, 1.0, heads=heads, keys=keys,
                               overlap=overlap)  # fmt: skip
    with pytest.raises(ValueError, match="GL_KEYS=128 with GL_OVERLAP"):
        tri._gluon.dq_pass(q, k, k, q, q, None, None, idx, None, None, None, None, None, 128, 1.0, 1.0, keys=128,
                           overlap=True)  # fmt: skip
    with pytest.raises(ValueError, match="GL_KEYS=128 with STAGES <= 2 only; got STAGES=3.*CONFIG_OVERRIDE"):
        tri._gluon.dq_pass(q, k, k, q, q, None, None, idx, None, None, None, None, None, 128, 1.0, 1.0, stages=3,
                           keys=128)  # fmt: skip


def test_rejects_bad_shapes():
    q = torch.zeros(1, 2, 32, 24)
    k = torch.zeros(1, 2, 32, 24)
    with pytest.raises(ValueError):
        sparse_attention_triton(q, k, k, torch.zeros(1, 2, 2, 1, dtype=torch.int64), 16)  # D not a power of 2
    q = torch.zeros(1, 2, 32, 32)
    with pytest.raises(ValueError):
        sparse_attention_triton(q, q, q, torch.zeros(1, 2, 3, 1, dtype=torch.int64), 16)  # nb mismatch
    idx, mask = torch.zeros(1, 2, 2, 1, dtype=torch.int64), torch.ones(1, 2, 2, 1, dtype=torch.bool)
    means = (torch.zeros(1, 2, 2, 32), torch.zeros(1, 2, 2, 16))  # k̄ of the wrong head dim
    with pytest.raises(ValueError, match=r"route_means must be two \[Bt, Hkv, nb, D\] = \[1, 2, 2, 32\]"):
        sparse_attention_triton(q, q, q, idx, 16, routed_mask=mask, route_means=means)
    with pytest.raises(ValueError, match="beside routed_mask"):  # means without the mask they serve
        sparse_attention_triton(q, q, q, idx, 16, route_means=(means[0], means[0]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 tl.dot is wrong in Triton's interpreter")
@pytest.mark.parametrize("bs,gluon", [(64, 1), (64, 0), (128, 1)])
def test_bf16_on_gpu(monkeypatch, bs, gluon):
    """The GPU configurations of both block sizes (128: 128-key forward tiles, 64-key dQ sub-tiles, 8-warp
    dK/dV programs holding 128 keys); at 64 every pass both as Gluon (the default on Hopper) and as Triton."""
    monkeypatch.setattr(tri, "CONFIG_OVERRIDE", {kind: {"GLUON": gluon} for kind in ("fwd", "dq", "dkdv")})
    g = torch.Generator().manual_seed(17 + bs)
    bt, hq, hkv, t, d, s = 2, 8, 2, 1000, 128, 6
    q, k, v = make_inputs(bt, hq, hkv, t, d, g, torch.bfloat16)
    indices = random_indices(bt, hkv, -(-t // bs), s, g)
    docs = random_docs(bt, t, 4, g)
    bb = 0.5 * torch.randn(indices.shape, generator=g)
    got, ref = run_both(q, k, v, indices, bs, g, doc_ids=docs, bias=bb, kv_split=4)
    assert_close(got, ref, torch.bfloat16)
    assert not math.isnan(got["out"].float().sum().item())


def _hopper() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9


GLUON_CASES = ["ragged-bias", "hf-layout", "docs", "gqa8", "every-block-selects-the-sink", "late-block-rescale"]


def _gluon_case(case: str, g: torch.Generator, bs: int = 64) -> tuple:
    """(q, k, v, indices, block bias, doc ids) of one Gluon test case, bf16, block bs, D 128: ragged T, Bt > 1, block
    bias, padded rows of different lengths (n_valid differs between programs), an empty row, HF's layout, documents,
    a GQA group of 8 (two programs per query block), every query block listing block 0, or a late block scoring far
    above the first (the online rescale)."""
    bt, hq, hkv, t, d, s = 2, 16 if case == "gqa8" else 8, 2, 1000, 128, 6
    q, k, v = make_inputs(bt, hq, hkv, t, d, g, torch.bfloat16)
    nb = -(-t // bs)
    indices = random_indices(bt, hkv, nb, s, g)
    docs = random_docs(bt, t, 4, g) if case == "docs" else None
    indices[0, 0, 3] = -1  # a query block with no listed block: out 0, lse -inf
    indices[1, 1, 5, 1:] = -1  # one listed block only
    bb = 0.5 * torch.randn(indices.shape, generator=g)
    if case == "hf-layout":
        q, k, v = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v))
    elif case == "every-block-selects-the-sink":
        i = torch.arange(nb)
        rows = torch.stack([torch.zeros_like(i), i], 1)
        rows[0, 1] = -1
        indices = rows.expand(bt, hkv, nb, 2).clone()
        bb = 0.5 * torch.randn(indices.shape, generator=g)
    elif case == "late-block-rescale":
        q = (1.0 + 0.1 * torch.randn(q.shape, generator=g)).to(torch.bfloat16)
        k = 0.1 * torch.randn(k.shape, generator=g)
        k[:, :, 2 * bs : 3 * bs] += 3.0  # block 2 scores ~ +384 x 1/sqrt(128) x log2(e) ~ 49 log2 units above
        k = k.to(torch.bfloat16)
        j = torch.arange(nb)
        indices = torch.where(j[None, :] <= j[:, None], j[None, :], -1).expand(bt, hkv, nb, nb).clone()  # 0 .. i
        bb = None
    return q, k, v, indices, bb, docs


def _count_calls(monkeypatch, name: str) -> list:
    calls = []
    real = getattr(tri._gluon, name)
    monkeypatch.setattr(tri._gluon, name, lambda *a, **kw: calls.append(real(*a, **kw)) or calls[-1])
    return calls


@pytest.mark.skipif(not (_hopper() and tri._gluon.HAVE_GLUON), reason="the Gluon kernels are Hopper-only (sm_90)")
@pytest.mark.parametrize(
    "bs,pingpong,stages,heads,keys,overlap",
    [(64, 0, 2, 2, 64, 0), (64, 1, 2, 2, 64, 0), (64, 0, 3, 2, 64, 0), (128, 0, 2, 2, 64, 0), (64, 0, 2, 1, 64, 0),
     (128, 0, 2, 1, 128, 0), (64, 0, 2, 1, 64, 1), (128, 0, 2, 1, 128, 1), (128, 0, 3, 1, 128, 1),
     (128, 1, 3, 1, 128, 1), (64, 1, 2, 1, 64, 1)],
)  # fmt: skip
@pytest.mark.parametrize("case", GLUON_CASES)
def test_gluon_forward_on_hopper(monkeypatch, bs, pingpong, stages, heads, keys, overlap, case):
    """The warp-specialised Gluon forward (``gluon.py``) in bf16 against the fp32 reference, with poisoned outputs, on
    each ``_gluon_case`` (block 128: two 64-key steps a block, two programs a query block; or one head of 64 rows a
    consumer, 128 keys a step, with or without each step's softmax beside the previous step's P V, and that overlap
    with the consumers taking turns); the gradients go through the Triton backward from the Gluon forward's out and
    lse."""
    fwd = {"GLUON": 1, "PINGPONG": pingpong, "STAGES": stages, "GL_HEADS": heads, "GL_KEYS": keys}
    fwd["GL_OVERLAP"] = overlap
    monkeypatch.setattr(tri, "CONFIG_OVERRIDE", {"fwd": fwd, "dq": {"GLUON": 0}, "dkdv": {"GLUON": 0}})
    calls = _count_calls(monkeypatch, "forward")
    shape = "" if (heads, keys, overlap) == (2, 64, 0) else f"-{heads}-{keys}" + "-ov" * overlap
    g = torch.Generator().manual_seed(zlib.crc32(f"{case}-{bs}-{pingpong}-{stages}{shape}".encode()))
    q, k, v, indices, bb, docs = _gluon_case(case, g, bs)
    got, ref = run_both(q, k, v, indices, bs, g, doc_ids=docs, bias=bb, kv_split=3)
    assert calls, "the Gluon forward did not run"
    assert_close(got, ref, torch.bfloat16)


@pytest.mark.skipif(not (_hopper() and tri._gluon.HAVE_GLUON), reason="the Gluon kernels are Hopper-only (sm_90)")
@pytest.mark.parametrize(
    "bs,stages,keys,overlap",
    [(64, 2, 64, 0), (64, 3, 64, 0), (128, 2, 64, 0), (128, 2, 128, 0), (64, 3, 64, 1), (128, 3, 64, 1)],
)
@pytest.mark.parametrize("case", GLUON_CASES)
def test_gluon_dq_on_hopper(monkeypatch, bs, stages, keys, overlap, case):
    """The warp-specialised Gluon dQ pass (dq and the block-bias gradient) in bf16 against the fp32 reference with
    poisoned outputs, on each ``_gluon_case`` (block 128: a block's bias gradient summed over its two 64-key steps
    and its two programs, or over one 128-key step; with or without each step's softmax beside the previous step's
    dq product); the forward and dK/dV passes are the Triton ones."""
    dq = {"GLUON": 1, "STAGES": stages, "GL_KEYS": keys, "GL_OVERLAP": overlap}
    monkeypatch.setattr(tri, "CONFIG_OVERRIDE", {"fwd": {"GLUON": 0}, "dq": dq, "dkdv": {"GLUON": 0}})
    calls = _count_calls(monkeypatch, "dq_pass")
    shape = "" if (keys, overlap) == (64, 0) else f"-{keys}" + "-ov" * overlap
    g = torch.Generator().manual_seed(zlib.crc32(f"dq-{case}-{bs}-{stages}{shape}".encode()))
    q, k, v, indices, bb, docs = _gluon_case(case, g, bs)
    got, ref = run_both(q, k, v, indices, bs, g, doc_ids=docs, bias=bb, kv_split=3)
    assert calls and all(calls), "the Gluon dQ pass did not run"
    assert_close(got, ref, torch.bfloat16)


@pytest.mark.skipif(not (_hopper() and tri._gluon.HAVE_GLUON), reason="the Gluon kernels are Hopper-only (sm_90)")
@pytest.mark.parametrize("bs,delta", [(64, 0), (64, 1), (128, 0), (128, 1)])
@pytest.mark.parametrize("case", GLUON_CASES)
def test_gluon_delta_paths_on_hopper(monkeypatch, bs, delta, case):
    """delta = rowsum(dO * O) - dlse both ways into the Gluon dQ and dK/dV passes (every pass Gluon, the defaults
    otherwise): GL_DELTA=1, the dQ pass computes it from its own tiles and writes the dK/dV pass's row statistics
    (every row of them: ragged T, empty rows, documents); GL_DELTA=0, ``_delta_kernel`` and ``gluon.row_stats``.
    bf16 against the fp32 reference with poisoned outputs; the loss has an lse term, so dlse is not zero."""
    monkeypatch.setattr(tri, "CONFIG_OVERRIDE", {"dq": {"GL_DELTA": delta}})
    fused = []  # (delta fused, the pass ran) per dQ pass
    dq_pass = tri._gluon.dq_pass

    def spy(*a, **kw):
        fused.append((kw["st"] is not None, dq_pass(*a, **kw)))
        return fused[-1][1]

    monkeypatch.setattr(tri._gluon, "dq_pass", spy)
    kernel = _count_calls(monkeypatch, "dkdv_pass")
    g = torch.Generator().manual_seed(zlib.crc32(f"delta-{case}-{bs}-{delta}".encode()))
    q, k, v, indices, bb, docs = _gluon_case(case, g, bs)
    got, ref = run_both(q, k, v, indices, bs, g, doc_ids=docs, bias=bb, kv_split=3)
    assert fused == [(bool(delta), True)] and kernel and all(kernel), "the Gluon passes did not run as configured"
    assert_close(got, ref, torch.bfloat16)


@pytest.mark.skipif(not (_hopper() and tri._gluon.HAVE_GLUON), reason="the Gluon kernels are Hopper-only (sm_90)")
@pytest.mark.parametrize("bs,stages,kv_split", [(64, 4, 3), (64, 2, None), (128, 4, 3), (128, 3, None)])
@pytest.mark.parametrize("case", GLUON_CASES)
def test_gluon_dkdv_on_hopper(monkeypatch, bs, stages, kv_split, case):
    """The warp-specialised Gluon dK/dV pass in bf16 against the fp32 reference with poisoned outputs, on each
    ``_gluon_case``: key blocks written by the program that owns them and, with ``kv_split``, lists cut into pieces
    whose fp32 partials the reduction kernel sums (the sink case: every query block lists block 0). Block 128: each
    consumer holds 64 of the keys and takes every slice (an odd stage count is allowed there)."""
    dkdv = {"GLUON": 1, "STAGES": stages}
    monkeypatch.setattr(tri, "CONFIG_OVERRIDE", {"fwd": {"GLUON": 0}, "dq": {"GLUON": 0}, "dkdv": dkdv})
    calls = _count_calls(monkeypatch, "dkdv_pass")
    g = torch.Generator().manual_seed(zlib.crc32(f"dkdv-{case}-{bs}-{stages}-{kv_split}".encode()))
    q, k, v, indices, bb, docs = _gluon_case(case, g, bs)
    got, ref = run_both(q, k, v, indices, bs, g, doc_ids=docs, bias=bb, kv_split=kv_split)
    assert calls and all(calls), "the Gluon dK/dV pass did not run"
    assert_close(got, ref, torch.bfloat16)
