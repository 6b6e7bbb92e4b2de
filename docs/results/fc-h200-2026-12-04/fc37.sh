#!/bin/bash
# Issue 6, twelfth session, the moment fc35.sh returns (same warm machine: runs/fc35/ssa must still be there):
# eval-only on its checkpoint with attention.ssa.node_score=bound (new: coarse nodes scored by an upper bound of
# their best block, per-dimension min / max over block means, instead of their mean; blocks scored as before, no
# retraining). niah_single_1 at 1M at 12 positions with beams of 64 at every level (fc30, mean scores, beam_min=64:
# 0 of 12), then 4M at 2 positions with beams of 64, then 1M with beams of 16 as time allows. Compare fc35's own
# 1M row (mean scores, [64,256,256]). Copy to devrun/, carry .whl and devrun:  bash devrun/fc37.sh
# CPU smoke after fc35.sh's: NOPIP=1 PYTHONPATH=$PWD EXTRA=--smoke EL=2048 EL4=2048 DEPTHS="0.25 0.75" OUT=/tmp/o bash devrun/fc37.sh
F=${F:-runs/fc35}; O=${OUT:-/tmp}
[ -d $F/ssa/checkpoints ] || { echo "no $F/ssa/checkpoints: the machine went cold after fc35.sh; run fc35.sh again"; exit 1; }
[ -n "$NOPIP" ] || [ -d /tmp/site/hydra ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
DEPTHS=${DEPTHS:-"0.08 0.16 0.24 0.32 0.4 0.48 0.56 0.64 0.72 0.8 0.88 0.96"}
run() {  # name, eval length, depths, then --eval-ssa's pairs
  L=$((${TOTAL:-430} - SECONDS)); [ $L -gt 30 ] || return
  timeout $L python3 scripts/prove_functional_context.py --out $F-$1 --recipe h200-4k-attended --models ssa --eval-only \
    --checkpoint $F/ssa --needle-routing --tasks niah_single_1 --eval-lengths $2 --depths $3 --eval-ssa ${@:4} \
    $EXTRA 2>&1 | grep -E "train.eval: niah|Error|\|" | grep -v "^Command"
  echo "$1 rc=${PIPESTATUS[0]} t=$SECONDS"
  tar czf $O/fc37.tgz ${F}-bd*/*.json ${F}-bd*/*/eval/*.json* devrun/fc37.sh 2>/dev/null
}
run bd64 ${EL:-1M} "$DEPTHS" node_score=bound "beam_widths=[64,64,64]"
run bd4m ${EL4:-4M} "${DEPTHS4:-0.3 0.7}" node_score=bound "beam_widths=[64,64,64,64]"
run bd16 ${EL:-1M} "$DEPTHS" node_score=bound "beam_widths=[16,16,16]"
echo "end t=$SECONDS"
