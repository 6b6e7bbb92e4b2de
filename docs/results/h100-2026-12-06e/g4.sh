#!/bin/bash
# Thirty-first session, call 4 (one H100): the final code. 1. Gluon dK/dV tests (turn-taking removed) on two cases;
# 2. block 128 at 1M: forward with 3 stages, dQ with 3 stages, against the defaults; 3. the official benchmark at
# block 64 (the default), now with the routing gradient's block-add kernel.
O=${OUT:-/tmp}; mkdir -p $O; export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 80 python3 -m pytest -q tests/test_ssa_attention_triton.py -k "gluon_dkdv and (ragged or sink)" 2>&1 | tail -3 | tee $O/pytest.log
echo "pytest rc=${PIPESTATUS[0]} t=$SECONDS"
timeout 30 python3 scripts/bench_attention_kernel.py --block-size 128 --sizes "" --sweep-T 1048576 --reps 3 \
  --fwd-variants " ; fwd:STAGES=3" 2>&1 | grep -E "best|err" | tee $O/fwd-b128.log
timeout 60 python3 scripts/bench_attention_kernel.py --block-size 128 --sizes "" --sweep-T 1048576 --reps 3 \
  --bwd-variants " ; dq:STAGES=3" 2>&1 | grep -E "best|err" | tee $O/bwd-b128.log
echo "variants t=$SECONDS"
mkdir -p $O/A
timeout 170 python3 scripts/bench_attention.py --selector fast --out $O/A --n 16K 128K 1M --decode-n \
  --dense-fwd-max 131072 --dense-fwdbwd-max 131072 2>&1 | tail -30 | tee $O/A/bench.log
echo "run A rc=${PIPESTATUS[0]} t=$SECONDS"
