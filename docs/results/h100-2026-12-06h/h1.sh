#!/bin/bash
# Thirty-fourth session, call 1: 1. the training selector's GPU tests and its selections against the reference at
# 512K and 1M (after the thirty-third session's top-k early stop); 2. the fwd+bwd profile at block 128 (timing the
# routing gradient's reuse of the selector's block means); 3. the graphed decode step kernel by kernel, blocks 128
# and 64, under launch-parameter variants (scripts/profile_decode.py), with the two fused launches (the update's last
# program commits the rows; the attention's last split program merges its row) and the select kernel's unrolled
# head-dim chunks against the code before them. (merge= was a knob of the code at this call: the attention's last split
# program merging its row; measured slower here and dropped before call 2.)
O=${OUT:-/tmp}; mkdir -p $O; export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
PYTHONPATH=$PWD timeout 240 python3 -m pytest -q -x tests/test_ssa_selector_fast.py tests/test_ssa_decode_selector.py \
  tests/test_ssa_decode_triton.py 2>&1 | tail -3 | tee $O/pytest.log
echo "pytest rc=${PIPESTATUS[0]} t=$SECONDS"
PYTHONPATH=$PWD timeout 80 python3 scripts/bench_selector.py --n 1048576 --ref-max 1048576 --check 524288 1048576 \
  --out $O/sel 2>&1 | tail -8 | tee $O/selector.log
echo "selector t=$SECONDS"
PYTHONPATH=$PWD timeout 90 python3 devrun/prof.py 128 2>&1 | head -45 > $O/prof128.txt; head -30 $O/prof128.txt
echo "prof t=$SECONDS"
PYTHONPATH=$PWD timeout 280 python3 scripts/profile_decode.py --block-size 128 64 --out $O/dec --variants default \
  commit=0+merge=0+unroll=0 unroll=0 commit=0+merge=0 pps=2 select=1,4,32 select=1,8,32 select=1,8,64 awarps=8 2>&1 | tail -18 | tee $O/dec.log
echo "decode t=$SECONDS"
