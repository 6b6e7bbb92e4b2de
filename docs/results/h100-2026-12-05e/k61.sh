#!/bin/bash
# Twentieth session (~45 s): the dQ pass at 1M. It runs at ~245 TFLOP/s over its 3 matmuls (428 ms) where the forward
# reaches ~440: one 8-warp program per SM (222 registers) whose S -> P -> dP -> dS -> dQ chain has nothing to overlap
# with. 64-row / 4-warp programs compile to 208 registers without spills (scripts/kernel_sass.py --kernel dq): two
# programs an SM, which can overlap one's softmax with the other's products; 32-key steps (170 registers) shorten the
# chain. The default is timed first and last (drift).
O=${OUT:-/tmp}; mkdir -p $O; export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
BENCH_BUDGET_S=60 timeout 80 python3 scripts/bench_attention_kernel.py --sizes "" --sweep-T 1048576 \
  --sweep "dq:128,8,3,1 dq:64,4,3,1 dq:64,4,2,1 dq:64,4,4,1 dq:128,8,3,1,32 dq:128,8,2,1 dq:128,8,3,1" 2>&1 \
  | tee $O/dq-sweep.log
echo "dq sweep rc=$? t=$SECONDS"
