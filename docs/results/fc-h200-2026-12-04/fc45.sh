#!/bin/bash
# Issue 6 (fourteenth session, 2026-12-04; refused a machine that session, CPU-smoke-tested): convert the dense model
# that learnt multikey to SSA. fc44: with --recipe h200-4k-multikey the dense model reads niah_multikey_2 at 4K 4 of 4
# (16 of 16 teacher-forced) but 0 of 4 at 16K; the ssa model trained from the same stage 1 reads 1 of 4 at 4K and 0 from
# 16K, its attention ranking the right key's block near chance in layers 1-9. Here: stage 1 + the dense stage 2 (as
# fc44); the rank probe on the dense checkpoint as SSA routing every block (--as-ssa: where does the dense model's
# answer row look at 4K and 16K, where its greedy read fails?); then an ssa stage started from the dense stage-2
# weights (the library's use case: a dense model converted to SSA, its router distilled from attention that already
# does the key match), read on multikey at 4K / 16K. Issue fc45b.sh the moment it returns (runs/ lives while warm).
# Copy fclib.sh, fc45.sh and fc45b.sh to devrun/, carry .whl and devrun:  bash devrun/fc45.sh
# CPU smoke: NOPIP=1 PYTHONPATH=$PWD EXTRA="--smoke" LD=1024 LC="1024 2048" RL="1K" OUT=/tmp/o45 bash devrun/fc45.sh
TAG=fc45; F=runs/fc45; TOTAL=${TOTAL:-575}; source devrun/fclib.sh
M="--recipe h200-4k-multikey --tasks niah_multikey_2 --depths 0.2 0.4 0.6 0.8"
prove d 290 $M --models dense --eval-lengths ${LD:-4K}
D=$(ls -d $F-d/dense/checkpoints/step_*/model 2>/dev/null | tail -1)
[ -n "$D" ] || { echo "no dense checkpoint in $F-d"; exit 1; }
timeout 50 python3 scripts/needle_rank_probe.py $D --as-ssa --local-window 256 --lengths ${RL:-4K 16K} \
  --tasks niah_multikey_2 --out $O/ranks-dense.json > $O/ranks-dense.log 2>&1
echo "ranks-dense rc=$? t=$SECONDS"; grep "^|" $O/ranks-dense.log
prove c 300 $M --models ssa --pretrain-min 0 --pretrained $D --time-budget-min ${TB:-3.0} --needle-routing \
  --eval-lengths ${LC:-4K 16K}
echo "end t=$SECONDS"
