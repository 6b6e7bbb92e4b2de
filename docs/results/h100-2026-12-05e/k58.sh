#!/bin/bash
# After k57.sh on the same warm machine (~330 s, no wheels): SSA at 1M with the default kernels in the official script
# (the same-machine baseline of k57's variant run); the dK/dV pass at 1M as configured (64-row tiles, 4 warps, two
# programs an SM, which spill 7 loads an iteration in Triton 3.6: scripts/kernel_sass.py --kernel dkdv) against the
# spill-free 128-row / 8-warp tiles and 8 warps keys-first; then k56.sh (the bound search with whole nodes apart).
O=${OUT:-/tmp}; mkdir -p $O; export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
timeout 90 python3 scripts/bench_attention.py --selector fast --out $O --n 1M --decode-n --reps 2 \
  --methods ssa ssa_selector 2>&1 | tail -12 | tee $O/bench-1m-defaults.log
echo "bench defaults rc=$? t=$SECONDS"
BENCH_BUDGET_S=200 timeout 220 python3 scripts/bench_attention_kernel.py --sizes "" --sweep-T 1048576 \
  --sweep "dkdv:64,4,2 dkdv:128,8,2 dkdv:64,8,2,1,64,1 dkdv:64,4,2" 2>&1 | tee $O/dkdv-sweep.log
echo "dkdv sweep rc=$? t=$SECONDS"
T=$((570 - SECONDS)) bash devrun/k56.sh
