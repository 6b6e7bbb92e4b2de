#!/bin/bash
# Thirty-third session, call 4 (one H100): the official benchmark with the full set of sizes (8K ... 1M) and
# decode at 128K and 1M (the script's defaults), block 128 and then block 64, on the final code.
O=${OUT:-/tmp}; mkdir -p $O; export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name --format=csv,noheader
mkdir -p $O/G $O/H
timeout 280 python3 scripts/bench_attention.py --selector fast --block-size 128 --out $O/G 2>&1 | tail -45 > $O/G/bench.log
echo "run G (block 128) rc=$? t=$SECONDS"; grep -E "n= 1048576 (fwd|fwdbwd) |decode|wrote" $O/G/bench.log
timeout 280 python3 scripts/bench_attention.py --selector fast --out $O/H 2>&1 | tail -45 > $O/H/bench.log
echo "run H (block 64) rc=$? t=$SECONDS"; grep -E "n= 1048576 (fwd|fwdbwd) |decode|wrote" $O/H/bench.log
rm -f $O/*/*.png
