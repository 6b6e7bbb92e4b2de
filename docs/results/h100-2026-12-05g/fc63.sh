#!/bin/bash
# Issue 6, twenty-second session's plan (~560 s, one GPU). fc62 (this session) read, with fc60's recipe retrained:
# niah_multikey_1 at 256K 3 of 8 (fc60: 3 of 4), and niah_single_2 (the same essay haystack, no distractors) 0.38 /
# 0.88 / 0.12 / 0.00 at 16K / 64K / 256K / 1M: the prose haystack, not the distractors, is what the router fails on
# beyond 64K (the needle lost at the search's leaf level in ~0.65 of pairs at 256K). Stage 2 there drew a third of
# its rows from prose (niah_multikey_1 only). Here the same recipe with two thirds prose rows (niah_single_2 added,
# niah_multikey_2, read 0 beyond 4K by every model, dropped), read at 256K on both prose tasks over fc62's 8 depths
# with fc62's evaluation search (bound node scores, beams of 64, the trained budget of 16 routed blocks).
# --override is replaced as a whole by a later occurrence: the recipe's extra-lookup keys are repeated here.
# Copy to devrun/ with fclib.sh; carry .whl and devrun:  bash devrun/fc63.sh ; then at once bash devrun/fc63b.sh
# CPU smoke: NOPIP=1 PYTHONPATH=$PWD EXTRA="--smoke" EL=2048 OUT=/tmp/o63 bash devrun/fc63.sh
TAG=fc63; F=runs/fc63; TOTAL=${TOTAL:-570}; source devrun/fclib.sh
prove ssa 560 --recipe h200-4k-multikey --models ssa --needle-routing --tasks niah_multikey_1 niah_single_2 \
  --override data.synthetic.extra_queries=8 data.synthetic.extra_order=random \
  "data.synthetic.tasks=[niah_single_1,niah_single_2,niah_multikey_1]" \
  --depths 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 --time-budget-min ${TB:-3.6} --eval-lengths ${EL:-256K}
echo "end t=$SECONDS"
