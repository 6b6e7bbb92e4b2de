#!/bin/bash
# Thirtieth session, call 6 (one H100): the Gluon dK/dV pass after the fix (K/V views made inside the partitions).
# 1. GPU tests of the Gluon kernels and the bf16 test, every pass both ways (-x);
# 2. the whole backward at 1M: Triton dQ + Triton dK/dV, Gluon dQ + Triton dK/dV, Gluon both (4 / 2 stages);
# 3. the official benchmark run A with the defaults (every Gluon pass) if the tests passed, else with dK/dV in Triton.
O=${OUT:-/tmp}; mkdir -p $O; export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
timeout 170 python3 -m pytest -q -x tests/test_ssa_attention_triton.py -k "gluon_dkdv or bf16 or gluon_dq" 2>&1 | tail -8 | tee $O/pytest-gluon.log
rc=${PIPESTATUS[0]}; echo "pytest rc=$rc t=$SECONDS"
KC=""; [ "$rc" != 0 ] && KC="--kernel-config dkdv:GLUON=0"
timeout 120 python3 scripts/bench_attention_kernel.py --sizes "" --sweep-T 1048576 --reps 3 --bwd-variants \
  "dq:GLUON=0 dkdv:GLUON=0; dkdv:GLUON=0; ; dkdv:STAGES=2" 2>&1 | tee $O/bwd-variants.log
echo "bwd variants rc=${PIPESTATUS[0]} t=$SECONDS"
mkdir -p $O/A
timeout 150 python3 scripts/bench_attention.py --selector fast --out $O/A --n 16K 128K 1M --decode-n \
  --dense-fwd-max 524288 --dense-fwdbwd-max 131072 $KC 2>&1 | tail -32 | tee $O/A/bench.log
echo "run A ($KC) rc=${PIPESTATUS[0]} t=$SECONDS"
