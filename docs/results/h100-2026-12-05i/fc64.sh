#!/bin/bash
# Issue 6, twenty-third session's plan (~520 s, one GPU). fc63 (this session): stage 2's rows two thirds prose, read
# with bound leaf scores, 256 level-1 nodes and 64 routed blocks (--recipe h200-4k-prose): niah_multikey_1 at 256K
# 13 of 16 depths (7 of the recipe's 8), niah_single_2 6 of 8; one training run. Here a second training run of the
# same recipe, read at 256K on niah_multikey_1 over the recipe's 8 depths: the run-to-run spread of that figure
# (fc60 / fc62, two runs of h200-4k-multikey, read 0.75 and 0.38).
# Copy to devrun/ with fclib.sh; carry .whl and devrun:  bash devrun/fc64.sh ; then at once bash devrun/fc64b.sh
# CPU smoke: NOPIP=1 PYTHONPATH=$PWD EXTRA="--smoke" EL=2048 OUT=/tmp/o64 bash devrun/fc64.sh
TAG=fc64; F=runs/fc64; TOTAL=${TOTAL:-570}; source devrun/fclib.sh
prove ssa 560 --recipe h200-4k-prose --models ssa --needle-routing --tasks niah_multikey_1 \
  --time-budget-min ${TB:-4.4} --eval-lengths ${EL:-256K}
echo "end t=$SECONDS"
