#!/bin/bash
# Issue 6, twenty-fourth session's plan (~470 s, then the wide search's GPU test; one GPU): one training run of
# --recipe h200-4k-prose read on the whole
# grid by three calls back to back (fc65.sh, fc65b.sh, fc65c.sh), so that docs/results/functional-context.json is one
# recipe's run rather than fc42 and fc64 joined. Here: stage 1 and the ssa stage 2 (as fc64.sh), read at 16K and 64K
# on the recipe's three tasks (niah_single_1, niah_single_2, niah_multikey_1), 4 depths (~3-5 s a sample on an H100).
# Copy to devrun/ with fclib.sh (docs/results/fc-h200-2026-12-04/) and fc65lib.sh; carry .whl and devrun:
#   bash devrun/fc65.sh ; then at once bash devrun/fc65b.sh ; then at once bash devrun/fc65c.sh
# CPU smoke: NOPIP=1 PYTHONPATH=$PWD EXTRA="--smoke" L1=1024 OUT=/tmp/o65 bash devrun/fc65.sh
TAG=fc65; F=runs/fc65; TOTAL=${TOTAL:-570}; source devrun/fc65lib.sh
# wide (fc65lib.sh): the GPU test of the wide search, run last here (16K / 64K reads do not use it), or first in the
# next call if this one ran out of time; not passed: the reference, per call
prove ssa 560 --recipe h200-4k-prose --models ssa --needle-routing --time-budget-min ${TB:-4.4} \
  --eval-lengths ${L1:-16K 64K} --depths 0.2 0.4 0.6 0.8
t=$((TOTAL - SECONDS - 5)); [ $t -gt 40 ] && wide $t
echo "end t=$SECONDS"
