#!/bin/bash
# Issue 6, for the next device session (written 2026-12-04, thirteenth session): does stage 2 with 8 lookups of random
# other needles after each multikey row (--recipe h200-4k-multikey) teach the key match at 4K? fc43 (h200-4k-bound's
# training) read niah_multikey_2 at 4K 0/4 on both ssa and dense. ssa and dense side by side from one stage 1, read at
# 4K on both tasks (greedy, 4 positions), then scripts/needle_rank_probe.py on the ssa checkpoint (4K, 16K) and
# scripts/probe_answers.py (teacher-forced, 16 samples) on both. Issue fc44b.sh the moment it returns.
# Copy fclib.sh and fc44*.sh to devrun/, carry .whl and devrun:  bash devrun/fc44.sh
# CPU smoke: NOPIP=1 PYTHONPATH=$PWD EXTRA="--smoke" LS="1024" PL=1024 RL=1024 OUT=/tmp/o44 bash devrun/fc44.sh
TAG=fc44; F=runs/fc44; TOTAL=${TOTAL:-590}; source devrun/fclib.sh
prove sd 490 --recipe h200-4k-multikey --models ssa dense --jobs 2 --needle-routing --eval-lengths ${LS:-4K} \
  --depths 0.2 0.4 0.6 0.8 --dense-max-len 16K
probes $F-sd
echo "end t=$SECONDS"
