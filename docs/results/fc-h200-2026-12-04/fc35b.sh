#!/bin/bash
# Issue 6, the moment fc35.sh returns (same warm machine: runs/fc35/ssa must still be there): eval-only on its
# checkpoint. (1) niah_single_1 at 1M with the trained beams of 64 (beam_min=64; fc30, distilled toward true distances:
# 0 of 12) at 12 positions: does the attended target make the cheap search find the needle? (2) 4M with the recipe's
# beams ([64,256,256]: 64 of 128 level-3 nodes, 256 at levels 2 and 1) at 2 positions, as time allows.
# Copy to devrun/, carry .whl and devrun:  bash devrun/fc35b.sh
# CPU smoke after fc35.sh's: NOPIP=1 PYTHONPATH=$PWD EXTRA=--smoke EL=2048 EL4=2048 DEPTHS="0.25 0.75" OUT=/tmp/o bash devrun/fc35b.sh
F=${F:-runs/fc35}; O=${OUT:-/tmp}
[ -d $F/ssa/checkpoints ] || { echo "no $F/ssa/checkpoints: the machine went cold after fc35.sh; run fc35.sh again"; exit 1; }
[ -n "$NOPIP" ] || [ -d /tmp/site/hydra ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
DEPTHS=${DEPTHS:-"0.08 0.16 0.24 0.32 0.4 0.48 0.56 0.64 0.72 0.8 0.88 0.96"}
run() {  # name, eval length, depths, then --eval-ssa's pairs (none: the recipe's)
  L=$((${TOTAL:-420} - SECONDS)); [ $L -gt 30 ] || return
  timeout $L python3 scripts/prove_functional_context.py --out $F-$1 --recipe h200-4k-attended --models ssa --eval-only \
    --checkpoint $F/ssa --needle-routing --tasks niah_single_1 --eval-lengths $2 --depths $3 ${4:+--eval-ssa ${@:4}} \
    $EXTRA 2>&1 | grep -E "train.eval: niah|Error|\|" | grep -v "^Command"
  echo "$1 rc=${PIPESTATUS[0]} t=$SECONDS"
  tar czf $O/fc35b.tgz ${F}-*/*.json ${F}-*/*/eval/*.json* devrun/fc35b.sh 2>/dev/null
}
run b64 ${EL:-1M} "$DEPTHS" beam_min=64
run 4m ${EL4:-4M} "${DEPTHS4:-0.3 0.7}"
echo "end t=$SECONDS"
