#!/bin/bash
# Issue 6, after fc32.sh on the same warm machine (runs/fc/ssa must still be there): paired evaluations of its
# checkpoint at 1M, 12 needle positions each: beam_full_span=4096 (the length-independent form of the recipe's
# beam_widths=[64,256,64]; equal for 1M answer rows) and the trained beams of 64 (fc30's setting, which read 0/12
# on another run). Copy to devrun/, carry .whl and devrun:  bash devrun/fc32b.sh
# CPU smoke after fc32.sh's: NOPIP=1 PYTHONPATH=$PWD EXTRA=--smoke EL=2048 DEPTHS="0.25 0.75" OUT=/tmp/o bash devrun/fc32b.sh
F=${F:-runs/fc}; O=${OUT:-/tmp}
[ -d $F/ssa/checkpoints ] || { echo "no $F/ssa/checkpoints: the machine went cold after fc32.sh; run fc32.sh again"; exit 1; }
[ -n "$NOPIP" ] || [ -d /tmp/site/hydra ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
DEPTHS=${DEPTHS:-"0.08 0.16 0.24 0.32 0.4 0.48 0.56 0.64 0.72 0.8 0.88 0.96"}
for B in "beam_full_span=4096" "beam_min=64"; do
  D=${F}-${B%%=*}; L=$((${TOTAL:-580} - SECONDS)); [ $L -gt 25 ] || break
  timeout $((L / 2 > 150 ? L / 2 : L)) python3 scripts/prove_functional_context.py --out $D --recipe h200-4k-wide --models ssa \
    --eval-only --checkpoint $F/ssa --needle-routing --tasks niah_single_1 --eval-lengths ${EL:-1M} --eval-ssa $B \
    --depths $DEPTHS $EXTRA 2>&1 | grep -E "train.eval: niah|Error|\|"
  echo "$B rc=${PIPESTATUS[0]} t=$SECONDS"
done
tar czf $O/fc32b.tgz ${F}-*/*.json ${F}-*/*/eval/*.json* devrun/fc32b.sh 2>/dev/null; echo "end t=$SECONDS"
