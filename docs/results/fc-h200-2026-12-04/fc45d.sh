#!/bin/bash
# Issue 6 (fifteenth session, 2026-12-04; no machine lent that session; for after fc45.sh on the same warm machine):
# fc45's conversion (the dense stage-2 model that reads multikey at 4K, converted to SSA, 3 min of ssa stage) with the
# router distilled toward each key block's largest ONE-ROW mass (attention.ssa.distill_rows=max) instead of the query
# block's mean. A routed block serves every row of its query block, so it is worth routing if one row needs it; the
# mean target averages the answer row's lookup with rows that spread their far mass over the haystack's look-alike
# needles. Compare with fc45's c stage (distill_rows=mean), multikey at 4K / 16K.
# Copy fclib.sh and fc45d.sh to devrun/, carry .whl and devrun:  bash devrun/fc45d.sh
# CPU smoke: NOPIP=1 PYTHONPATH=$PWD EXTRA="--smoke" LC="1024 2048" OUT=/tmp/o45 bash devrun/fc45d.sh
TAG=fc45d; F=runs/fc45; TOTAL=${TOTAL:-575}; source devrun/fclib.sh
D=$(ls -d $F-d/dense/checkpoints/step_*/model 2>/dev/null | tail -1)
[ -n "$D" ] || { echo "no dense checkpoint in $F-d: the machine went cold; run fc45.sh first"; exit 1; }
prove m 300 --recipe h200-4k-multikey --tasks niah_multikey_2 --depths 0.2 0.4 0.6 0.8 --models ssa \
  --pretrain-min 0 --pretrained $D --time-budget-min ${TB:-3.0} --needle-routing --eval-lengths ${LC:-4K 16K} \
  --ssa-override attention.ssa.local_window=256 attention.ssa.topk_blocks=16 attention.ssa.routing=distill \
  attention.ssa.distill_blocks=0 attention.ssa.beam_min=64 attention.ssa.far_distance=1024 \
  attention.ssa.distill_target=attended attention.ssa.distill_rows=max
echo "end t=$SECONDS"
