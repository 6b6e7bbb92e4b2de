#!/bin/bash
# Thirty-second session, call 5 (one H100): the final code (block 128 defaults: forward one head a consumer, 128-key
# steps, overlapped, 3 stages; dQ overlapped, 3 stages; dK/dV 3 stages; the routing gradient's block-mean gradients
# as one Triton kernel). 1. GPU tests (bf16 at the defaults, routing gradient, block-add, scores kernel);
# 2. a profile of fwd+bwd at 1M; 3. the official benchmark at block 128 with the defaults.
O=${OUT:-/tmp}; mkdir -p $O; export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 100 python3 -m pytest -q tests/test_ssa_attention_triton.py tests/test_ssa.py \
  -k "scores_grad or bf16 or routing_gradient or block_add" 2>&1 | tail -4 | tee $O/pytest.log
echo "pytest rc=${PIPESTATUS[0]} t=$SECONDS"
timeout 45 python3 devrun/prof.py 128 2>&1 | grep -v Warn | head -32 | tee $O/prof.log
echo "prof t=$SECONDS"
mkdir -p $O/A
timeout 150 python3 scripts/bench_attention.py --selector fast --block-size 128 --out $O/A --n 16K 128K 1M --decode-n \
  --dense-fwd-max 131072 --dense-fwdbwd-max 131072 2>&1 | tail -30 | tee $O/A/bench.log
echo "run A rc=${PIPESTATUS[0]} t=$SECONDS"
