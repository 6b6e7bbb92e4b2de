#!/bin/bash
# Issue 6 (after fc65.sh, on the same warm machine; ~550 s): the swa and dense models from fc65's own stage 1, side by
# side (--jobs 2, the recipe's stage-2 budget each), read on the recipe's three tasks at 16K, 64K and 256K (dense up to
# 64K, the recipe's --dense-max-len), 4 depths (fc64e.sh: ~300 s); then the ssa model at 256K on niah_single_1 and
# niah_single_2, 8 depths each (~13 s a sample).
# CPU smoke after fc65.sh's: NOPIP=1 PYTHONPATH=$PWD EXTRA="--smoke" L1=1024 L2=2048 OUT=/tmp/o65 bash devrun/fc65b.sh
TAG=fc65b; F=runs/fc65; TOTAL=${TOTAL:-570}; source devrun/fc65lib.sh
trained; wide 120  # the wide search: tested once per machine, else the reference
S1=$(ls -d $F-ssa/pretrain/checkpoints/step_*/model 2>/dev/null | tail -1)
[ -n "$S1" ] || { echo "no $F-ssa stage-1 checkpoint: the machine went cold after fc65.sh; run it again"; exit 1; }
prove base 360 --recipe h200-4k-prose --models swa dense --jobs 2 --pretrain-min 0 --pretrained $S1 \
  --eval-lengths ${L1:-16K 64K} ${L2:-256K} --depths 0.2 0.4 0.6 0.8
ev s1 150 --tasks niah_single_1 --eval-lengths ${L2:-256K}
ev s2 150 --tasks niah_single_2 --eval-lengths ${L2:-256K}
echo "end t=$SECONDS"
