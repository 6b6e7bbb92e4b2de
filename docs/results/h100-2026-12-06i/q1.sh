#!/bin/bash
# Thirty-fifth session, call 2 (one GPU): the quality check that a block-128 default awaits. One training run of
# --recipe h200-4k-prose with SSA at 128-key blocks and the recipe's token budgets kept: local window 256 tokens,
# 8 routed blocks of 128 in training (the recipe: 16 of 64), 32 at evaluation (the recipe: 64 of 64; 4K tokens
# either way). Read at 16K / 64K on the recipe's three tasks (4 depths), then niah_multikey_1 at 256K (8 depths),
# as fc65.sh / fc65c.sh read the block-64 run. Copy to devrun/ with fclib.sh (docs/results/fc-h200-2026-12-04/) and
# fc65lib.sh (docs/results/h100-2026-12-05i/); carry .whl and devrun. q2.sh reads the same run at once after.
# CPU smoke: NOPIP=1 PYTHONPATH=$PWD EXTRA="--smoke" L1=1024 L2=2048 OUT=/tmp/q1 bash devrun/q1.sh
TAG=q1; F=runs/q128; TOTAL=${TOTAL:-575}; source devrun/fc65lib.sh
SSA128=(--ssa-override attention.ssa.block_size=128 attention.ssa.local_window=256 attention.ssa.topk_blocks=8
  attention.ssa.routing=distill attention.ssa.distill_blocks=0 attention.ssa.beam_min=64
  attention.ssa.far_distance=1024 attention.ssa.distill_target=attended)
EV128=(--eval-ssa node_score=bound leaf_score=bound "beam_widths=[64,256,512]" topk_blocks=32)
prove ssa 560 --recipe h200-4k-prose --models ssa --needle-routing --time-budget-min ${TB:-4.4} "${SSA128[@]}" \
  "${EV128[@]}" --eval-lengths ${L1:-16K 64K} --depths 0.2 0.4 0.6 0.8
trained; ev mk 170 "${EV128[@]}" --tasks niah_multikey_1 --eval-lengths ${L2:-256K}
echo "end t=$SECONDS"
