#!/bin/bash
# Issue 6, twenty-first session's plan (~575 s, one GPU). fc60 (this session) read niah_multikey_1 0.50 / 0.75 / 0.75 /
# 0.00 at 16K / 64K / 256K / 1M, 4 depths each, and its wrong answers are never a distractor's value: at 16K-256K the
# model mis-copies digits of the right needle (4211343 read 7211343), at 1M the right block is not routed (lost at the
# search's level 2 in 0.57 of (layer, head) pairs). Here the same training (--recipe h200-4k-multikey, ssa), then
#   ssa: niah_multikey_1 at 256K over 8 depths (4 was too few to tell 0.75 from 0.90),
#   w:   1M over 3 depths with every level-2 node kept (node_score=bound beam_widths=[64,256,256]; --eval-ssa is
#        replaced as a whole, not appended; the wide beams read the single needle 12 of 12 at 1M), and niah_single_2
#        (the same essay haystack, no distractors) beside it, to tell the haystack's effect from the distractors'.
# Copy to devrun/ with fclib.sh; carry .whl and devrun:  bash devrun/fc62.sh ; then at once bash devrun/fc62b.sh
# CPU smoke: NOPIP=1 PYTHONPATH=$PWD EXTRA="--smoke" EL=2048 EL2=2048 OUT=/tmp/o62 bash devrun/fc62.sh
TAG=fc62; F=runs/fc62; TOTAL=${TOTAL:-575}; source devrun/fclib.sh
prove ssa 470 --recipe h200-4k-multikey --models ssa --needle-routing --tasks niah_multikey_1 \
  --depths 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 --time-budget-min ${TB:-3.6} --eval-lengths ${EL:-256K}
C=$F-ssa/ssa
[ -d $C ] && prove w 150 --recipe h200-4k-multikey --models ssa --eval-only --checkpoint $C --needle-routing \
  --tasks niah_multikey_1 niah_single_2 --depths 0.2 0.5 0.8 --eval-ssa node_score=bound "beam_widths=[64,256,256]" \
  --eval-lengths ${EL2:-1M}
echo "end t=$SECONDS"
