#!/bin/bash
# Twentieth session (~150 s, one H100): the dQ pass at 1M and the backward with dK/dV on a side stream.
# dQ runs at ~245 TFLOP/s over its 3 matmuls (428 ms) where the forward reaches ~440: one 8-warp program per SM (222
# registers) whose S -> P -> dP -> dS -> dQ chain has nothing to overlap with. 64-row / 4-warp programs compile to 208
# registers without spills (scripts/kernel_sass.py --kernel dq): two programs an SM; 32-key steps (170 registers)
# shorten the chain. The default is timed first and last (drift). Then the whole backward with tri.BWD_OVERLAP (dK/dV
# on a side stream beside dQ: programs of both kernels may share an SM), and its GPU test.
O=${OUT:-/tmp}; mkdir -p $O; export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
timeout 100 python3 -m pytest -q tests/test_ssa_attention_triton.py -k overlap 2>&1 | tail -4 | tee $O/pytest-gpu.log
echo "pytest rc=$? t=$SECONDS"
BENCH_BUDGET_S=50 timeout 70 python3 scripts/bench_attention_kernel.py --sizes "" --sweep-T 1048576 \
  --sweep "dq:128,8,3,1 dq:64,4,3,1 dq:64,4,2,1 dq:64,4,4,1 dq:128,8,3,1,32 dq:128,8,2,1 dq:128,8,3,1" 2>&1 \
  | tee $O/dq-sweep.log
echo "dq sweep rc=$? t=$SECONDS"
timeout 150 python3 scripts/bench_attention_kernel.py --sizes "" --sweep-T 1048576 --reps 3 --bwd-variants \
  "; overlap; dq:BLOCK_M=64,num_warps=4; dq:BLOCK_M=64,num_warps=4 overlap; dq:BLOCK_M=64,num_warps=4,num_stages=2 overlap" 2>&1 | tee $O/bwd-variants.log
echo "bwd variants rc=$? t=$SECONDS"
