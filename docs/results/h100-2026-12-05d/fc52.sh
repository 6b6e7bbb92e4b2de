#!/bin/bash
# Issue 6, for the session after the seventeenth (CPU-smoke-tested): multikey beyond 4K needs a dense model that does
# the lookup at the evaluated length first (fc45: the 4K-trained dense model's attention ranks the key at chance at
# 16K; fc51: its SSA conversion trained on 16K rows still routes at chance). Here the dense stage 2 itself trains on
# 16K rows (2 a step, the same tokens a step as 8 rows of 4K), is read on multikey at 4K / 16K and probed as SSA at
# 16K (does any layer now rank the key's block in the top 16?), then converted to SSA and its ssa stage trained on
# 16K rows too, read at 16K / 64K. One call, ~560 s.
# Copy fclib.sh and fc52.sh to devrun/, carry .whl and devrun:  bash devrun/fc52.sh
# CPU smoke: NOPIP=1 PYTHONPATH=$PWD EXTRA="--smoke" TL=2048 LD="1K 2K" LC="2K" RL="2K" OUT=/tmp/o52 bash devrun/fc52.sh
TAG=fc52; F=runs/fc52; TOTAL=${TOTAL:-590}; source devrun/fclib.sh
M="--recipe h200-4k-multikey --tasks niah_multikey_2 --depths 0.2 0.4 0.6 0.8"
R="--train-len ${TL:-16384} --override data.synthetic.extra_queries=8 data.synthetic.extra_order=random train.micro_batch=2"
prove d 320 $M --models dense $R --time-budget-min ${TD:-2.5} --eval-lengths ${LD:-4K 16K}
D=$(ls -d $F-d/dense/checkpoints/step_*/model 2>/dev/null | tail -1)
[ -n "$D" ] || { echo "no dense checkpoint in $F-d"; exit 1; }
timeout 45 python3 scripts/needle_rank_probe.py $D --as-ssa --local-window 256 --lengths ${RL:-16K} \
  --tasks niah_multikey_2 --out $O/ranks-dense.json > $O/ranks-dense.log 2>&1
echo "ranks-dense rc=$? t=$SECONDS"; grep "^|" $O/ranks-dense.log
prove l 300 $M --models ssa --pretrain-min 0 --pretrained $D $R --time-budget-min ${TB:-2.5} --needle-routing \
  --eval-lengths ${LC:-16K 64K}
echo "end t=$SECONDS"
