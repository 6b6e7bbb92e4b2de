#!/bin/bash
# Issue 6, twenty-fourth session's plan (~510 s, one GPU): one training run of --recipe h200-4k-prose read on the whole
# grid by three calls back to back (fc65.sh, fc65b.sh, fc65c.sh), so that docs/results/functional-context.json is one
# recipe's run rather than fc42 and fc64 joined. Here: stage 1 and the ssa stage 2 (as fc64.sh), read at 16K and 64K
# on the recipe's three tasks (niah_single_1, niah_single_2, niah_multikey_1), 4 depths (~3-5 s a sample on an H100).
# Copy to devrun/ with fclib.sh (docs/results/fc-h200-2026-12-04/); carry .whl and devrun:
#   bash devrun/fc65.sh ; then at once bash devrun/fc65b.sh ; then at once bash devrun/fc65c.sh
# CPU smoke: NOPIP=1 PYTHONPATH=$PWD EXTRA="--smoke" L1=1024 OUT=/tmp/o65 bash devrun/fc65.sh
TAG=fc65; F=runs/fc65; TOTAL=${TOTAL:-570}; source devrun/fclib.sh
# First (~40 s): the selector's search wider than a warp (twenty-fifth session, CPU-tested only), which fc65b / fc65c's
# reads at 256K and 1M now run instead of the reference selector. Should it fail, set _MAX_WARPS = 1 in
# ssa_kernels/selector/fast.py (the reference again) before fc65b.sh; this call's 16K / 64K reads do not use it.
[ -n "$NOPIP" ] || timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_ssa_selector_fast.py \
  -k "cuda and wider" 2>&1 | tail -4 | tee $O/selector-wide-tests.log
prove ssa 560 --recipe h200-4k-prose --models ssa --needle-routing --time-budget-min ${TB:-4.4} \
  --eval-lengths ${L1:-16K 64K} --depths 0.2 0.4 0.6 0.8
echo "end t=$SECONDS"
