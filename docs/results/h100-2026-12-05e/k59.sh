#!/bin/bash
# Twentieth session (one H100): k57's forward variants at 1M (relerr now in slices: fp64 of a 1M output OOMed),
# then k58's dK/dV sweep and k56 (selector, whole nodes apart). ~450 s.
O=${OUT:-/tmp}; mkdir -p $O; export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
timeout 200 python3 scripts/bench_attention_kernel.py --sizes "" --sweep-T 1048576 --reps 4 --fwd-variants \
  "; fwd:LAZY=1; fwd:LAZY=1,num_stages=3; fwd:LAZY=1,BLOCK_M=128,num_warps=4" 2>&1 | tee $O/variants.log
echo "variants rc=$? t=$SECONDS"
BENCH_BUDGET_S=150 timeout 170 python3 scripts/bench_attention_kernel.py --sizes "" --sweep-T 1048576 \
  --sweep "dkdv:64,4,2 dkdv:128,8,2 dkdv:64,8,2,1,64,1 dkdv:64,4,2" 2>&1 | tee $O/dkdv-sweep.log
echo "dkdv sweep rc=$? t=$SECONDS"
T=$((570 - SECONDS)) bash devrun/k56.sh
