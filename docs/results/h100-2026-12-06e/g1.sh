#!/bin/bash
# Thirty-first session, call 1 (one H100): Gluon kernels at block 128 (two 64-key sub-blocks; dK/dV consumers share
# each q/dO slice). 1. every GPU test of the attention kernels; 2. backward variants at 1M, block 128 and 64;
# 3. forward at 1M, block 128, Gluon vs Triton; 4. official benchmark at block 128 (SSA, selector, Flex, FA2 128K).
O=${OUT:-/tmp}; mkdir -p $O; export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 240 python3 -m pytest -q tests/test_ssa_attention_triton.py 2>&1 | tail -15 | tee $O/pytest-attention.log
echo "pytest rc=${PIPESTATUS[0]} t=$SECONDS"
timeout 100 python3 scripts/bench_attention_kernel.py --block-size 128 --sizes "" --sweep-T 1048576 --reps 3 \
  --bwd-variants "dkdv:GLUON=0; ; dkdv:STAGES=3; dq:GLUON=0" 2>&1 | tee $O/bwd-b128.log
echo "bwd b128 rc=${PIPESTATUS[0]} t=$SECONDS"
timeout 45 python3 scripts/bench_attention_kernel.py --sizes "" --sweep-T 1048576 --reps 3 --bwd-variants " " 2>&1 | tee $O/bwd-b64.log
echo "bwd b64 rc=${PIPESTATUS[0]} t=$SECONDS"
timeout 45 python3 scripts/bench_attention_kernel.py --block-size 128 --sizes "" --sweep-T 1048576 --reps 3 \
  --fwd-variants "fwd:GLUON=0; " 2>&1 | tee $O/fwd-b128.log
echo "fwd b128 rc=${PIPESTATUS[0]} t=$SECONDS"
mkdir -p $O/B
timeout 150 python3 scripts/bench_attention.py --selector fast --block-size 128 --out $O/B --n 128K 1M \
  --methods fa2_sdpa ssa ssa_selector flex --dense-fwd-max 131072 --dense-fwdbwd-max 131072 2>&1 | tail -20 | tee $O/B/bench.log
echo "run B rc=${PIPESTATUS[0]} t=$SECONDS"
