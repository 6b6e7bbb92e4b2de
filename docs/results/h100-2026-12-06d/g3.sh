#!/bin/bash
# Thirtieth session, call 3 (one H100): the warp-specialised Gluon dQ pass.
# 1. GPU tests of the Gluon dQ pass (one block at a time; pipelined one block ahead) and the bf16 check on the
#    benchmark-sized shapes; 2. the whole backward at 1M: Triton dQ against the Gluon variants (two rounds).
O=${OUT:-/tmp}; mkdir -p $O; export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
timeout 150 python3 -m pytest -q -x tests/test_ssa_attention_triton.py -k "gluon_dq" 2>&1 | tail -6 | tee $O/pytest-dq.log
echo "pytest rc=${PIPESTATUS[0]} t=$SECONDS"
timeout 120 python3 scripts/bench_attention_kernel.py --sizes "" --check-override "dq:GLUON=1,PIPE=1,num_stages=3" 2>&1 \
  | tee $O/check-dq.log
echo "check rc=${PIPESTATUS[0]} t=$SECONDS"
timeout 150 python3 scripts/bench_attention_kernel.py --sizes "" --sweep-T 1048576 --reps 3 --bwd-variants \
  "; dq:GLUON=1; dq:GLUON=1,num_stages=3; dq:GLUON=1,PIPE=1,num_stages=3; dq:GLUON=1,PIPE=1,num_stages=4" 2>&1 \
  | tee $O/bwd-variants.log
echo "bwd variants rc=${PIPESTATUS[0]} t=$SECONDS"
