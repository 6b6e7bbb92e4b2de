#!/bin/bash
# Issue 6, twenty-eighth session: the item left (the dense model read at 1M) in one call, for a session whose failed
# starts leave too little device time for fc66.sh + fc66d.sh. One training run (stage 1, then ssa and dense stage 2 side
# by side), each read at 1M on niah_single_1 at the recipe's 8 depths (the dense read is cut by the call's limit; each
# sample is written as it is read). fc66y.sh reads more of the same checkpoints if the machine stays warm.
# CPU smoke: NOPIP=1 PYTHONPATH=$PWD EXTRA="--smoke" L3=4096 OUT=/tmp/o66x bash devrun/fc66x.sh
TAG=fc66x; F=runs/fc66; TOTAL=${TOTAL:-575}; source devrun/fc66lib.sh
prove run 570 --recipe h200-4k-prose --models ssa dense --jobs 2 --dense-max-len 4M --eval-lengths ${L3:-1M} \
  --tasks niah_single_1
echo "end t=$SECONDS"
