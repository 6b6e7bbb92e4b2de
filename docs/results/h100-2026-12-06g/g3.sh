#!/bin/bash
# Thirty-third session, call 3 (one H100): 1. GPU tests of both delta paths into the Gluon dQ and dK/dV passes
# (GL_DELTA=1: the dQ pass computes delta and the row statistics; 0: _delta_kernel and row_stats); 2. the whole
# backward at 1M with and without GL_DELTA, block 128 and block 64; 3. the official benchmark at block 128 twice more.
O=${OUT:-/tmp}; mkdir -p $O; export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 150 python3 -m pytest -q $(cat devrun/tests3.txt) 2>&1 | tail -4 | tee $O/pytest.log
echo "pytest rc=${PIPESTATUS[0]} t=$SECONDS"
timeout 80 python3 scripts/bench_attention_kernel.py --block-size 128 --sizes "" --sweep-T 1048576 --reps 5 \
  --bwd-variants " ; dq:GL_DELTA=0" 2>&1 | grep -E "best|err|Error" | tee $O/bwd-b128.log
echo "bwd128 t=$SECONDS"
timeout 80 python3 scripts/bench_attention_kernel.py --sizes "" --sweep-T 1048576 --reps 5 \
  --bwd-variants " ; dq:GL_DELTA=0" 2>&1 | grep -E "best|err|Error" | tee $O/bwd-b64.log
echo "bwd64 t=$SECONDS"
for r in E F; do
  mkdir -p $O/$r
  timeout 120 python3 scripts/bench_attention.py --selector fast --block-size 128 --out $O/$r --n 16K 128K 1M \
    --decode-n --dense-fwd-max 131072 --dense-fwdbwd-max 131072 2>&1 | tail -30 > $O/$r/bench.log
  echo "run $r rc=$? t=$SECONDS"; grep -E "n= 1048576 (fwd|fwdbwd) " $O/$r/bench.log
done
rm -f $O/*/*.png
