"""Triton flash-decoding kernel (``ssa_kernels/decode/triton.py``) against the reference ``_attend_rows``.

Fresh random inputs per case; the reference runs in fp32 on the same (rounded) values. Outputs are written
into a NaN-filled buffer and the split-K partials are NaN-filled too, so any element a program fails to
write fails the comparison. Without CUDA the kernels run in Triton's interpreter (``conftest.py``), where
tl.dot on bf16 is wrong, so bf16 is checked only on a GPU. Shapes stay small (block 16) to keep the file
fast in the interpreter.
"""

import pytest
import torch

import ssa_kernels.decode.triton as dtriton
from ssa_kernels import SSAConfig
from ssa_kernels.decode import DecodeState, decode_attention_triton, ssa_decode_step
from ssa_kernels.decode import reference as dref
from ssa_kernels.decode.reference import _attend_rows

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def poisoned_partials(monkeypatch):
    monkeypatch.setattr(dtriton, "_WORKSPACE_FILL", float("nan"))


def relerr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def make_case(bt, hq, hkv, seq_len, d, rows, block, s, dtype, seed, doc_starts=False, future=False):
    """q [bt, hq, rows, d], caches [bt, hkv, seq_len, d]; rows at random positions (the last one T - 1);
    per (batch, kv head, row): the row's own block plus a random number (0 .. s - 1) of earlier blocks,
    sorted, -1 padded to s, so valid counts differ. ``future``: some rows also list a block after their
    position (must be masked). ``doc_starts``: key_start per batch and row in [0, q_pos]."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(bt, hq, rows, d, generator=g).to(dtype)
    k = torch.randn(bt, hkv, seq_len, d, generator=g).to(dtype)
    v = torch.randn(bt, hkv, seq_len, d, generator=g).to(dtype)
    pos = torch.randint(0, seq_len, (rows,), generator=g)
    pos[-1] = seq_len - 1  # the ragged last block
    nb = -(-seq_len // block)
    idx = torch.full((bt, hkv, rows, s), -1, dtype=torch.long)
    for b in range(bt):
        for h in range(hkv):
            for r in range(rows):
                i = int(pos[r]) // block
                n = int(torch.randint(0, s, (), generator=g))
                listed = [i] + torch.randperm(i, generator=g)[:n].tolist()
                if future and i + 1 < nb and len(listed) < s and (b + h + r) % 2 == 0:
                    listed.append(i + 1)
                listed = sorted(set(listed))[:s]
                idx[b, h, r, : len(listed)] = torch.tensor(listed)
    if doc_starts:
        key_start = (torch.rand(bt, rows, generator=g) * (pos + 1)).long()  # [bt, rows], <= q_pos
    else:
        key_start = torch.zeros(1, rows, dtype=torch.long)
    to = {"device": DEVICE}
    return q.to(**to), k.to(**to), v.to(**to), idx.to(**to), pos.to(**to), key_start.to(**to)


def check(case, block, tol, blocks_per_split=None, scale=0.3):
    q, k, v, idx, pos, key_start = case
    want = _attend_rows(q.float(), k.float(), v.float(), idx, pos, key_start, block, scale)
    out = torch.full_like(q, float("nan"))
    got = decode_attention_triton(
        q, k, v, idx, pos, key_start, block, scale, out=out, blocks_per_split=blocks_per_split
    )
    assert got is out and got.dtype == q.dtype
    assert not got.isnan().any()
    err = relerr(got, want)
    assert err <= tol, err
    return got


CASES = {
    # bt, hq, hkv, T, D, R, S, dtype, doc_starts, future, blocks_per_split
    "G1-D64-R1-fp32": (1, 2, 2, 150, 64, 1, 5, torch.float32, False, False, None),
    "G4-D64-R3-Bt2-fp32-docs": (2, 8, 2, 203, 64, 3, 7, torch.float32, True, True, 2),
    "G8-D128-R2-fp32-onesplit": (1, 8, 1, 161, 128, 2, 6, torch.float32, False, True, 100),
    "G4-D128-R1-Bt2-fp16": (2, 4, 1, 97, 128, 1, 6, torch.float16, True, False, 1),
    "G8-D64-R3-fp16": (1, 16, 2, 250, 64, 3, 9, torch.float16, False, True, None),
    "G1-D128-R2-Bt2-fp16-docs": (2, 3, 3, 64, 128, 2, 4, torch.float16, True, False, 3),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_matches_reference(case):
    bt, hq, hkv, seq_len, d, rows, s, dtype, docs, future, bps = case
    tol = 1e-5 if dtype == torch.float32 else 3e-3  # fp16: inputs exact, P rounded to fp16 before P @ V
    data = make_case(bt, hq, hkv, seq_len, d, rows, 16, s, dtype, seed=seq_len, doc_starts=docs, future=future)
    check(data, 16, tol, blocks_per_split=bps)


def test_default_scale_and_any_split_give_the_same_result():
    data = make_case(1, 4, 2, 180, 64, 2, 16, 8, torch.float32, seed=7)
    q, k, v, idx, pos, key_start = data
    one = decode_attention_triton(q, k, v, idx, pos, key_start, 16, blocks_per_split=100)
    want = _attend_rows(q, k, v, idx, pos, key_start, 16, 64**-0.5)
    assert relerr(one, want) < 1e-5
    for bps in (1, 3):
        assert relerr(decode_attention_triton(q, k, v, idx, pos, key_start, 16, blocks_per_split=bps), one) < 1e-5


def test_all_padding_split_and_noncontiguous_inputs():
    """Blocks listed in the first entries only (later splits see nothing but -1), and q / caches read
    through strides (a transposed view), not copies."""
    q, k, v, idx, pos, key_start = make_case(1, 4, 2, 128, 64, 1, 16, 12, torch.float32, seed=3)
    idx[..., 2:] = -1
    idx[..., 1] = -1  # only the row's own block at entry 0
    kt = k.transpose(1, 2).contiguous().transpose(1, 2)  # [Bt, Hkv, T, D] with T-major memory
    vt = v.transpose(1, 2).contiguous().transpose(1, 2)
    check((q, kt, vt, idx, pos, key_start), 16, 1e-5, blocks_per_split=1)


def test_equals_the_reference_decode_step():
    """Inside ``ssa_decode_step`` (real selection: sinks, routed, local window), the kernel given the same
    arguments as the reference's attention returns the same output."""
    # backend="reference": on CUDA, ssa_decode_step would otherwise call the kernel itself, not _attend_rows
    cfg = SSAConfig(block_size=16, topk_blocks=3, local_window=32, top_nodes=4, routing="none", backend="reference")
    g = torch.Generator().manual_seed(0)
    bt, hq, hkv, seq_len, d = 2, 8, 2, 300, 64
    q, k, v = (torch.randn(bt, h, seq_len, d, generator=g).to(DEVICE) for h in (hq, hkv, hkv))
    state = DecodeState.from_prefill(q[:, :, :-1], k[:, :, :-1], cfg)
    calls = []

    def both(*args):
        calls.append((args, decode_attention_triton(*args, blocks_per_split=2)))
        return _attend_rows(*args)

    mp = pytest.MonkeyPatch()
    mp.setattr(dref, "_attend_rows", both)
    try:
        want = ssa_decode_step(q[:, :, -1:], k, v, state, cfg)
    finally:
        mp.undo()
    (args, got) = calls[0]
    assert (args[3] >= 0).sum(-1).min() >= 3  # several listed blocks per row
    assert relerr(got, want) < 1e-5


def test_rejects_bad_shapes():
    q, k, v, idx, pos, key_start = make_case(1, 4, 2, 64, 64, 1, 16, 4, torch.float32, seed=1)
    with pytest.raises(ValueError):
        decode_attention_triton(q, k, v, idx[:, :1], pos, key_start, 16)
    with pytest.raises(ValueError):
        decode_attention_triton(q[:, :3], k, v, idx, pos, key_start, 16)
    with pytest.raises(TypeError):
        decode_attention_triton(q.double(), k.double(), v.double(), idx, pos, key_start, 16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 tl.dot is wrong in Triton's interpreter")
def test_bf16_at_the_default_budget_on_gpu():
    """Production shape: blocks of 64, 129 listed (sink + 112 routed + 16 local), Hq 32 / Hkv 8, D 128."""
    g = torch.Generator(device="cuda").manual_seed(0)
    seq_len, block, s = 65536, 64, 129
    q = torch.randn(1, 32, 1, 128, device="cuda", generator=g).bfloat16()
    k = torch.randn(1, 8, seq_len, 128, device="cuda", generator=g).bfloat16()
    v = torch.randn(1, 8, seq_len, 128, device="cuda", generator=g).bfloat16()
    nb = seq_len // block
    routed = torch.rand(1, 8, 1, nb - 17, device="cuda", generator=g).topk(112, dim=-1).indices + 1
    fixed = torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(nb - 16, nb)]).cuda().expand(1, 8, 1, 17)
    idx = torch.cat([fixed, routed], -1).sort(-1).values
    assert idx.shape[-1] == s and (idx[..., 1:] > idx[..., :-1]).all()  # distinct blocks
    pos = torch.tensor([seq_len - 1], device="cuda")
    key_start = torch.zeros(1, 1, dtype=torch.long, device="cuda")
    want = _attend_rows(q.float(), k.float(), v.float(), idx, pos, key_start, block, 128**-0.5)
    got = decode_attention_triton(q, k, v, idx, pos, key_start, block)
    assert got.dtype == torch.bfloat16
    assert relerr(got, want) <= 1e-2
