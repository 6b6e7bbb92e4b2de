#!/bin/bash
# After k57.sh on the same warm machine (~250 s, no wheels): SSA at 1M with the default kernels in the official script
# (the same-machine baseline of k57's variant run), then k56.sh (the bound search with whole nodes apart).
O=${OUT:-/tmp}; mkdir -p $O; export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
timeout 90 python3 scripts/bench_attention.py --selector fast --out $O --n 1M --decode-n --reps 2 \
  --methods ssa ssa_selector 2>&1 | tail -12 | tee $O/bench-1m-defaults.log
echo "bench defaults rc=$? t=$SECONDS"
T=$((560 - SECONDS)) bash devrun/k56.sh
