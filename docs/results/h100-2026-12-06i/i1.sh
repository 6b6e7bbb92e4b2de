#!/bin/bash
# Thirty-fifth session, call 1 (one H100): the full official benchmark on the final code, block 128 (the
# ~8.3K-token budget that meets every target), then block 64 (the model default) if time is left.
O=${OUT:-/tmp}; mkdir -p $O; export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name --format=csv,noheader
for b in 128 64; do
  mkdir -p $O/B$b
  T=330; [ $b = 64 ] && T=$((570 - SECONDS)); [ $T -lt 60 ] && break
  timeout $T python3 scripts/bench_attention.py --selector fast --block-size $b --out $O/B$b 2>&1 | tail -60 > $O/B$b/bench.log
  echo "block $b rc=${PIPESTATUS[0]} t=$SECONDS"; tail -25 $O/B$b/bench.log
  rm -f $O/B$b/*.png
done
