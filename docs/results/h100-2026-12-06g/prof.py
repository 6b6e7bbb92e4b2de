"""Profile SSA fwd+bwd at 1M (the benchmark's setup) by CUDA kernel: where the time beyond the kernels goes."""

import sys

import torch
from torch.profiler import ProfilerActivity, profile

from ssa_kernels import SSAConfig, ssa_attention

bs = int(sys.argv[1]) if len(sys.argv) > 1 else 128
if len(sys.argv) > 2:  # a kernel config, as bench_attention.py --kernel-config
    import ssa_kernels.attention.triton as tri

    tri.CONFIG_OVERRIDE.update(tri.parse_config_override(sys.argv[2]))
n = 1 << 20
cfg = SSAConfig(block_size=bs, topk_blocks=112 * 64 // bs)
g = torch.Generator(device="cuda").manual_seed(0)
q = torch.randn(1, 32, n, 128, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
k = torch.randn(1, 8, n, 128, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
v = torch.randn(1, 8, n, 128, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
d_o = torch.randn_like(q)


def step():
    o = ssa_attention(q, k, v, cfg, backend="triton")
    return torch.autograd.grad(o, (q, k, v), d_o)


for _ in range(2):
    step()
torch.cuda.synchronize()
ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
ev[0].record()
step()
ev[1].record()
torch.cuda.synchronize()
print(f"block {bs}: fwd+bwd {ev[0].elapsed_time(ev[1]):.1f} ms (unprofiled)")
with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as p:
    step()
    torch.cuda.synchronize()
print(p.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=70))
