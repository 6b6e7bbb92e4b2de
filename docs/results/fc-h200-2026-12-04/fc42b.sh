#!/bin/bash
# Issue 6, call 2 of 3, the moment fc42.sh returns (warm machine: runs/fc42-ssa must be there): the swa and dense
# baselines from fc42's own stage 1, side by side (--jobs 2, h200-4k-bound's stage 2 budget each), then their rows:
# swa niah_single_1 at 16K-1M, dense at 16K / 64K (--dense-max-len), 4 positions each (the table's swa / dense rows
# are still fc15's, another recipe). Copy to devrun/, carry .whl and devrun:  bash devrun/fc42b.sh
# CPU smoke after fc42.sh's: NOPIP=1 PYTHONPATH=$PWD EXTRA="--smoke" LS="1024 2048" OUT=/tmp/o bash devrun/fc42b.sh
TAG=fc42b; source devrun/fclib.sh
S1=$(ls -d $F-ssa/pretrain/checkpoints/step_*/model 2>/dev/null | tail -1)
[ -n "$S1" ] || { echo "no $F-ssa/pretrain checkpoint: the machine went cold after fc42.sh; run fc42.sh again"; exit 1; }
prove base 560 --recipe h200-4k-bound --models swa dense --jobs 2 --pretrain-min 0 --pretrained $S1 \
  --eval-lengths ${LS:-16K 64K 256K 1M} --depths 0.2 0.4 0.6 0.8
echo "end t=$SECONDS"
