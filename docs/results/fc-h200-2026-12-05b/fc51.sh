#!/bin/bash
# Issue 6, seventeenth session: fc45's dense stage (stage 1 + dense stage 2 on multikey, h200-4k-multikey; 223 s in
# fc45) and then, in the same call, fc45c's step: the dense model converted to SSA with its ssa stage trained on 16K
# rows (2 rows a step), read on multikey at 16K / 64K. fc45 showed the dense model's attention ranks the key at
# chance at 16K after 4K training, so here the converted model must learn the lookup at the evaluated length.
# Copy fclib.sh and fc51.sh to devrun/, carry .whl and devrun:  bash devrun/fc51.sh
TAG=fc51; F=runs/fc51; TOTAL=${TOTAL:-590}; source devrun/fclib.sh
M="--recipe h200-4k-multikey --tasks niah_multikey_2 --depths 0.2 0.4 0.6 0.8"
prove d 240 $M --models dense --eval-lengths ${LD:-4K}
D=$(ls -d $F-d/dense/checkpoints/step_*/model 2>/dev/null | tail -1)
[ -n "$D" ] || { echo "no dense checkpoint in $F-d"; exit 1; }
prove l 400 $M --models ssa --pretrain-min 0 --pretrained $D --train-len ${TL:-16384} --time-budget-min ${TB:-3.5} \
  --override data.synthetic.extra_queries=8 data.synthetic.extra_order=random train.micro_batch=2 \
  --needle-routing --eval-lengths ${LC:-16K 64K}
echo "end t=$SECONDS"
