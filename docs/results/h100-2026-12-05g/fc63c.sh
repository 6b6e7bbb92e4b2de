#!/bin/bash
# Issue 6, a training variant for the session after fc63 / fc63b (~560 s, one GPU, a fresh machine is fine): fc63's
# prose-heavy stage 2 with the router distilled toward each key block's largest one-row mass
# (attention.ssa.distill_rows=max) instead of the query block's mean. The sixteenth session measured at 4K that it
# ranks the right block higher where the model attends to it (layer 5: top 16 in 0.65 of heads against 0.50); fc62
# showed the prose needle's block ranked at median 28-109 of ~250 at 16K. Read as fc63: both prose tasks at 256K,
# 8 depths, the recipe's search. --ssa-override is replaced as a whole by a later occurrence: the recipe's keys are
# repeated (h200-4k-multikey's last --ssa-override).
# CPU smoke: NOPIP=1 PYTHONPATH=$PWD EXTRA="--smoke" EL=2048 OUT=/tmp/o63c bash devrun/fc63c.sh
TAG=fc63c; F=runs/fc63c; TOTAL=${TOTAL:-570}; source devrun/fclib.sh
prove ssa 560 --recipe h200-4k-multikey --models ssa --needle-routing --tasks niah_multikey_1 niah_single_2 \
  --override data.synthetic.extra_queries=8 data.synthetic.extra_order=random \
  "data.synthetic.tasks=[niah_single_1,niah_single_2,niah_multikey_1]" \
  --ssa-override attention.ssa.local_window=256 attention.ssa.topk_blocks=16 attention.ssa.routing=distill \
  attention.ssa.distill_blocks=0 attention.ssa.beam_min=64 attention.ssa.far_distance=1024 \
  attention.ssa.distill_target=attended attention.ssa.distill_rows=max \
  --depths 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 --time-budget-min ${TB:-3.6} --eval-lengths ${EL:-256K}
echo "end t=$SECONDS"
