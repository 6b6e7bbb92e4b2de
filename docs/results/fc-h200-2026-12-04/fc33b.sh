#!/bin/bash
# Issue 6, right after fc33.sh on the same warm machine: eval-only on runs/fc33/ssa at 1M, 12 needle positions each:
# the wide level-1 beams again at 12 new positions (0.04 .. 0.92), then paired with the recipe's [64,256,64] and beams of 64.
F=runs/fc33; O=${OUT:-/tmp}
[ -d $F/ssa/checkpoints ] || { echo "no $F/ssa/checkpoints: machine went cold"; exit 1; }
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
D1="0.08 0.16 0.24 0.32 0.4 0.48 0.56 0.64 0.72 0.8 0.88 0.96"; D2="0.04 0.12 0.2 0.28 0.36 0.44 0.52 0.6 0.68 0.76 0.84 0.92"
run() { L=$((${TOTAL:-530} - SECONDS)); [ $L -gt 40 ] || return; timeout $L python3 scripts/prove_functional_context.py \
  --out $F-$1 --recipe h200-4k-wide --models ssa --eval-only --checkpoint $F/ssa --needle-routing --tasks niah_single_1 \
  --eval-lengths 1M --eval-ssa $2 --depths $3 2>&1 | grep -E "train.eval: niah|Error|\|"; echo "$1 rc=${PIPESTATUS[0]} t=$SECONDS"; }
run w256b "beam_widths=[64,256,256]" "$D2"
run w64 "beam_widths=[64,256,64]" "$D1"
run b64 "beam_min=64" "$D1"
tar czf $O/fc33b.tgz $F-*/*.json $F-*/*/eval/*.json* devrun/fc33b.sh 2>/dev/null; echo "end t=$SECONDS"
