#!/bin/bash
# Thirty-third session, call 5: the selector's top-k bisection stops a row once a midpoint has exactly k entries at or
# above it. 1. GPU tests of the decode selector and decode attention; 2. decode at 128K and 1M, block 64: the
# previous code (devrun/old = HEAD 57cf378's ssa_kernels and script) and this one, in the same call, then block 128;
# 3. the training selector at 1M, old and new. (devrun/old: `git archive 57cf378 ssa_kernels` plus that commit's
# scripts/bench_attention.py and bench_selector.py; not kept here.)
O=${OUT:-/tmp}; mkdir -p $O; export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
PYTHONPATH=$PWD timeout 60 python3 -m pytest -q -x tests/test_ssa_decode_selector.py tests/test_ssa_decode_triton.py \
  2>&1 | tail -3 | tee $O/pytest.log
echo "pytest rc=${PIPESTATUS[0]} t=$SECONDS"
for v in old new; do
  mkdir -p $O/dec64-$v
  if [ $v = old ]; then P=$PWD/devrun/old; S=devrun/old/scripts; else P=$PWD; S=scripts; fi
  PYTHONPATH=$P timeout 60 python3 $S/bench_attention.py --selector fast --decode-only --out $O/dec64-$v 2>&1 \
    | tail -20 > $O/dec64-$v/bench.log
  echo "decode block 64 $v rc=$? t=$SECONDS"; grep -E "decode n=.*(graph_k|fast_graph )" $O/dec64-$v/bench.log
done
mkdir -p $O/dec128-new
PYTHONPATH=$PWD timeout 60 python3 scripts/bench_attention.py --selector fast --block-size 128 --decode-only \
  --out $O/dec128-new 2>&1 | tail -20 > $O/dec128-new/bench.log
echo "decode block 128 new rc=$? t=$SECONDS"; grep -E "decode n=.*(graph_k|fast_graph )" $O/dec128-new/bench.log
for v in old new; do
  if [ $v = old ]; then P=$PWD/devrun/old; S=devrun/old/scripts; else P=$PWD; S=scripts; fi
  mkdir -p $O/sel-$v
  PYTHONPATH=$P timeout 40 python3 $S/bench_selector.py --n 1048576 --ref-max 1 --check --out $O/sel-$v 2>&1 \
    | tail -4 | tee $O/sel-$v/selector.log
  echo "selector $v t=$SECONDS"
done
rm -f $O/*/*.png
