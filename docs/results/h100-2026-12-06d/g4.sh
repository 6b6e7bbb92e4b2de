#!/bin/bash
# Thirtieth session, call 4 (one H100): the warp-specialised Gluon dK/dV pass (and the dQ pass, now the default).
# 1. GPU tests of the three Gluon kernels and the bf16 test with every pass both ways (-x);
# 2. the bf16 check on the benchmark-sized shapes, every Gluon pass on;
# 3. the whole backward at 1M: Triton dQ + Triton dK/dV, Gluon dQ + Triton dK/dV, Gluon dQ + Gluon dK/dV (4 / 2 stages).
O=${OUT:-/tmp}; mkdir -p $O; export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
timeout 200 python3 -m pytest -q -x tests/test_ssa_attention_triton.py -k "gluon_dkdv or gluon_dq or bf16" 2>&1 | tail -8 | tee $O/pytest-gluon.log
echo "pytest rc=${PIPESTATUS[0]} t=$SECONDS"
timeout 100 python3 scripts/bench_attention_kernel.py --sizes "" --check-override "dkdv:GLUON=1" 2>&1 | tee $O/check.log
echo "check rc=${PIPESTATUS[0]} t=$SECONDS"
timeout 150 python3 scripts/bench_attention_kernel.py --sizes "" --sweep-T 1048576 --reps 3 --bwd-variants \
  "dq:GLUON=0; ; dkdv:GLUON=1; dkdv:GLUON=1,STAGES=2" 2>&1 | tee $O/bwd-variants.log
echo "bwd variants rc=${PIPESTATUS[0]} t=$SECONDS"
