#!/bin/bash
# Issue 6, thirteenth session (2026-12-04): is multikey lost by the model or by the router's block summary?
# --recipe h200-4k-bound's training with ssa and dense side by side from one stage 1 (--jobs 2), both read on
# niah_multikey_2 and niah_single_1 at 4K (greedy, 4 positions), then on the ssa checkpoint
# scripts/needle_rank_probe.py (the needle's rank under the mean / token max / bound / attention scorers, at the
# answer's query block, every layer and kv head; 4K and 16K, 5 depths) and scripts/probe_answers.py (teacher-forced exact match, 16
# samples) on both models. Copy fclib.sh and fc43.sh to devrun/, carry .whl and devrun:  bash devrun/fc43.sh
# CPU smoke: NOPIP=1 PYTHONPATH=$PWD EXTRA="--smoke" LS="1024" PL=1024 RL=1024 OUT=/tmp/o43 bash devrun/fc43.sh
TAG=fc43; F=runs/fc43; TOTAL=${TOTAL:-575}; source devrun/fclib.sh
prove sd 480 --recipe h200-4k-bound --models ssa dense --jobs 2 --needle-routing --tasks niah_multikey_2 niah_single_1 \
  --eval-lengths ${LS:-4K} --depths 0.2 0.4 0.6 0.8 --dense-max-len 16K
R=$(ls -d $F-sd/ssa/checkpoints/step_* 2>/dev/null | tail -1); D=$(ls -d $F-sd/dense/checkpoints/step_* 2>/dev/null | tail -1)
[ -n "$R" ] || { echo "no ssa checkpoint"; exit 1; }
timeout 60 python3 scripts/needle_rank_probe.py $R --lengths ${RL:-4K 16K} --out $O/ranks.json > $O/ranks.log 2>&1
echo "ranks rc=$? t=$SECONDS"; grep "^|" $O/ranks.log
for m in $R $D; do
  timeout 25 python3 scripts/probe_answers.py $m --tasks niah_multikey_2 niah_single_1 --length ${PL:-4096} --samples 16 \
    2>/dev/null | tee -a $O/probe.jsonl
done
echo "end t=$SECONDS"
