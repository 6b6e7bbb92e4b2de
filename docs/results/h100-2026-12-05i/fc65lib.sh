#!/bin/bash
# Shared by fc65*.sh: set TAG, F (runs/fc65) and TOTAL, then source this (it sources fclib.sh). Defines
#   C                  fc65.sh's ssa run directory (its checkpoints), which the later calls read
#   trained            stop the call unless $C exists (the machine went cold after fc65.sh)
#   ev NAME SECONDS .. an eval-only read of $C under the recipe, with needle routing (fclib's prove)
#   wide [SECONDS]     the GPU test of the selector's search wider than a warp (ssa_kernels/selector/fast.py,
#                      twenty-fifth session; CPU-tested only), run until it has passed or failed once per machine (its
#                      log $F-wide-tests.log: runs/ stays on a warm machine). Unless the log says it passed, this
#                      call's copy of the tree gets _MAX_WARPS = 1: the PyTorch reference serves searches over 1,024
#                      slots, as before (the next call's tree is copied afresh, so every script calls wide first).
#                      Only reads at 256K and beyond use the wide search. CPU smoke (NOPIP=1): does nothing (the
#                      local tree is never edited).
source devrun/fclib.sh
C=$F-ssa/ssa
trained() { [ -d $C ] || { echo "no $C: the machine went cold after fc65.sh; run it again"; exit 1; }; }
ev() { local name=$1 limit=$2; shift 2
  prove $name $limit --recipe h200-4k-prose --models ssa --eval-only --checkpoint $C --needle-routing "$@"; }
wide() {
  [ -z "$NOPIP" ] || { echo "wide search: not tested (CPU smoke)"; return; }
  grep -q " passed\|failed\|error" $F-wide-tests.log 2>/dev/null ||
    timeout ${1:-150} python3 -m pytest -q -p no:cacheprovider tests/test_ssa_selector_fast.py -k "cuda and wider" \
      2>&1 | tail -4 > $F-wide-tests.log
  cp $F-wide-tests.log $O/selector-wide-tests.log
  if grep -q " passed" $F-wide-tests.log && ! grep -q "failed\|error" $F-wide-tests.log; then
    echo "wide search: GPU test passed ($(tail -1 $F-wide-tests.log))"
  else
    sed -i 's/^_MAX_WARPS = 8$/_MAX_WARPS = 1/' ssa_kernels/selector/fast.py
    echo "wide search: GPU test not passed ($(tail -1 $F-wide-tests.log)); the reference serves wide searches this call"
  fi
}
