#!/bin/bash
# Thirty-first session, call 3 (one H100): 1. GPU tests of what changed since call 2 (Gluon dK/dV at block 128 with
# and without taking turns, the bf16 test, the routing gradient's block-add kernel); 2. the block-add kernel against
# torch's broadcast add at 1M; 3. the backward at 1M, block 128: defaults vs PINGPONG 1 / 2; 4. the official
# benchmark at block 128 (16K, 128K, 1M; every method), with the faster dK/dV variant.
O=${OUT:-/tmp}; mkdir -p $O; export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 200 python3 -m pytest -q tests/test_ssa_attention_triton.py tests/test_ssa.py \
  -k "(gluon_dkdv and 128) or bf16 or block_add or routing_gradient" 2>&1 | tail -6 | tee $O/pytest.log
echo "pytest rc=${PIPESTATUS[0]} t=$SECONDS"
timeout 40 python3 - <<'PY' 2>&1 | tee $O/block-add.log
import torch
import ssa_kernels.attention.triton as tri
from ssa_kernels.attention.routing import _add_per_block as ref
for h in (32, 8):
    x = torch.randn(1, h, 1 << 20, 128, device="cuda", dtype=torch.bfloat16)
    g = torch.randn(1, 8, 8192, 128, device="cuda")
    for name, fn in (("torch", ref), ("triton", tri._add_per_block)):
        fn(x, g, 128)
        torch.cuda.synchronize()
        e = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
        e[0].record()
        for _ in range(5):
            fn(x, g, 128)
        e[1].record()
        torch.cuda.synchronize()
        ms = e[0].elapsed_time(e[1]) / 5
        print(f"x [1, {h}, 1M, 128] bf16 += g, block 128: {name} {ms:.2f} ms, {2 * x.numel() * 2 / ms / 1e9:.2f} TB/s")
PY
timeout 80 python3 scripts/bench_attention_kernel.py --block-size 128 --sizes "" --sweep-T 1048576 --reps 3 \
  --bwd-variants " ; dkdv:PINGPONG=1; dkdv:PINGPONG=2" 2>&1 | tee $O/bwd-b128.log
echo "bwd rc=${PIPESTATUS[0]} t=$SECONDS"
KC=$(python3 - $O/bwd-b128.log <<'PY'
import re, sys
best = {m.group(1): float(m.group(2)) for m in re.finditer(r"variant bwd \[(.*?)\] best +([\d.]+) ms", open(sys.argv[1]).read())}
d = best.get("defaults")
alt = min((v, k) for k, v in best.items() if k != "defaults") if len(best) > 1 else None
print(f"--kernel-config {alt[1]}" if d and alt and alt[0] < 0.985 * d else "")
PY
)
echo "kernel config: '$KC'"
mkdir -p $O/A
timeout 200 python3 scripts/bench_attention.py --selector fast --block-size 128 --out $O/A --n 16K 128K 1M --decode-n \
  --dense-fwd-max 131072 --dense-fwdbwd-max 131072 $KC 2>&1 | tail -30 | tee $O/A/bench.log
echo "run A rc=${PIPESTATUS[0]} t=$SECONDS"
