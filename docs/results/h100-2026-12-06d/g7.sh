#!/bin/bash
# Thirtieth session, call 7 (one H100): the final code (TMA-load shim for Triton 3.6 / 3.9): every GPU test of the
# attention kernels, then SSA against Flex at 1M once more (fwd, fwd+bwd) for the spread of the 1.00x reading.
O=${OUT:-/tmp}; mkdir -p $O; export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
timeout 150 python3 -m pytest -q tests/test_ssa_attention_triton.py 2>&1 | tail -4 | tee $O/pytest-attention.log
echo "pytest rc=${PIPESTATUS[0]} t=$SECONDS"
mkdir -p $O/C
timeout 90 python3 scripts/bench_attention.py --selector fast --out $O/C --n 1M --methods ssa flex --reps 3 2>&1 \
  | tail -14 | tee $O/C/bench.log
echo "run C rc=${PIPESTATUS[0]} t=$SECONDS"
