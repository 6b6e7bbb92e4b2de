"""Tiny Gluon dK/dV case: per key block NaN / error against the reference, for STAGES from argv."""

import sys

import torch

import ssa_kernels.attention.triton as tri
from ssa_kernels.attention.reference import sparse_attention

stages, bt, hq, hkv, t, s = (int(x) for x in sys.argv[1:7])
torch.manual_seed(0)
B, D = 64, 128
nb = -(-t // B)
q = torch.randn(bt, hq, t, D, device="cuda", dtype=torch.bfloat16)
k = torch.randn(bt, hkv, t, D, device="cuda", dtype=torch.bfloat16)
v = torch.randn(bt, hkv, t, D, device="cuda", dtype=torch.bfloat16)
# rows: blocks 0..min(i, s-1), -1 padded (sorted, padding at the end)
rows = torch.full((nb, s), -1, device="cuda", dtype=torch.int64)
for r in range(nb):
    vals = list(range(max(0, r - s + 1), r + 1))
    rows[r, : len(vals)] = torch.tensor(vals)
idx = rows.expand(bt, hkv, nb, s).contiguous()
tri.POISON = True
tri.CONFIG_OVERRIDE.update({"fwd": {"GLUON": 0}, "dq": {"GLUON": 0}, "dkdv": {"GLUON": 1, "STAGES": stages}})
leaves = [x.clone().requires_grad_() for x in (q, k, v)]
out, lse = tri._sparse_attention_triton(*leaves, idx, B)
do = torch.randn_like(out)
g = torch.autograd.grad((out.float() * do.float()).sum(), leaves)
torch.cuda.synchronize()
rl = [x.detach().float().requires_grad_() for x in (q, k, v)]
ro, _ = sparse_attention(*rl, idx, B)
rg = torch.autograd.grad((ro * do.float()).sum(), rl)
for name, a, r in (("dk", g[1], rg[1]), ("dv", g[2], rg[2])):
    a = a.float()
    nan = a.isnan().view(bt, hkv, nb, -1).any(-1)
    err = ((a - r).norm() / r.norm()).item() if not a.isnan().any() else float("nan")
    blockerr = (a - r).view(bt, hkv, nb, -1).norm(dim=-1) / r.view(bt, hkv, nb, -1).norm(dim=-1).clamp_min(1e-9)
    print(
        f"STAGES={stages} {name}: nan blocks {nan.sum().item()}/{nan.numel()} relerr {err:.3e}",
        "per-block err",
        [round(x, 3) for x in blockerr.flatten().tolist()[:16]],
        "nan",
        nan.flatten().tolist()[:16],
    )
print("dq relerr", ((g[0].float() - rg[0]).norm() / rg[0].norm()).item())
