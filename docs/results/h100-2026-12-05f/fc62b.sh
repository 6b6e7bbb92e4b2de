#!/bin/bash
# Issue 6, the call after fc62.sh on the same warm machine (runs/fc62-ssa must be there; ~560 s): the swa and dense
# baselines from fc62's own stage 1, side by side (--jobs 2, the recipe's stage-2 budget each), read on
# niah_multikey_1 (never read for either) and niah_single_1 at 16K / 64K / 256K (dense up to 64K, --dense-max-len),
# 4 depths each.
# CPU smoke after fc62.sh's: NOPIP=1 PYTHONPATH=$PWD EXTRA="--smoke" LS="1024 2048" OUT=/tmp/o62 bash devrun/fc62b.sh
TAG=fc62b; F=runs/fc62; TOTAL=${TOTAL:-560}; source devrun/fclib.sh
S1=$(ls -d $F-ssa/pretrain/checkpoints/step_*/model 2>/dev/null | tail -1)
[ -n "$S1" ] || { echo "no $F-ssa/pretrain checkpoint: the machine went cold after fc62.sh; run fc62.sh again"; exit 1; }
prove base 550 --recipe h200-4k-multikey --models swa dense --jobs 2 --pretrain-min 0 --pretrained $S1 \
  --tasks niah_multikey_1 niah_single_1 --eval-lengths ${LS:-16K 64K 256K} --depths 0.2 0.4 0.6 0.8
echo "end t=$SECONDS"
