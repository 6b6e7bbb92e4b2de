#!/bin/bash
# Issue 6 (fourteenth session; for after fc45.sh / fc45b.sh on the same warm machine, CPU-smoke-tested): the dense
# stage-2 model of fc45 converted to SSA with its ssa stage trained on 16K rows (--train-len 16384, 2 rows a step:
# the same tokens per step as 8 rows of 4K). At 4K 16 of 57 routable blocks are routed and a router near chance
# still catches the right key's block often; at 16K (16 of 249) only a router that ranks it high gets the answer,
# so the distillation and the LM loss both push the ranking. Multikey read at 16K / 64K.
# Copy fclib.sh and fc45c.sh to devrun/, carry .whl and devrun:  bash devrun/fc45c.sh
# CPU smoke: NOPIP=1 PYTHONPATH=$PWD EXTRA="--smoke" TL=2048 LC="2048" OUT=/tmp/o45 bash devrun/fc45c.sh
TAG=fc45c; F=runs/fc45; TOTAL=${TOTAL:-575}; source devrun/fclib.sh
D=$(ls -d $F-d/dense/checkpoints/step_*/model 2>/dev/null | tail -1)
[ -n "$D" ] || { echo "no dense checkpoint in $F-d: the machine went cold; run fc45.sh first"; exit 1; }
prove l 540 --recipe h200-4k-multikey --tasks niah_multikey_2 --depths 0.2 0.4 0.6 0.8 --models ssa \
  --pretrain-min 0 --pretrained $D --train-len ${TL:-16384} --time-budget-min ${TB:-4.0} \
  --override data.synthetic.extra_queries=8 data.synthetic.extra_order=random train.micro_batch=2 \
  --needle-routing --eval-lengths ${LC:-16K 64K}
echo "end t=$SECONDS"
