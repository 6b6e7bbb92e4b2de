#!/bin/bash
# Issue 6, third call of the next device session, the moment fc35b.sh returns (runs/fc35/ssa must still be there):
# the rest of a table row for fc35's checkpoint: niah_single_1 at 16K / 64K / 256K and niah_multikey_2 at 16K / 64K /
# 256K / 1M (the issue asks for multikey at every length; so far it was read at 4K and 16K only), 4 needle positions
# each, the recipe's beams. Copy to devrun/, carry .whl and devrun:  bash devrun/fc36.sh
# CPU smoke after fc35.sh's: NOPIP=1 PYTHONPATH=$PWD EXTRA=--smoke LS="1024 2048" LM="1024 2048" OUT=/tmp/o bash devrun/fc36.sh
F=${F:-runs/fc35}; O=${OUT:-/tmp}
[ -d $F/ssa/checkpoints ] || { echo "no $F/ssa/checkpoints: the machine went cold; run fc35.sh again"; exit 1; }
[ -n "$NOPIP" ] || [ -d /tmp/site/hydra ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
run() {  # name, task, lengths
  L=$((${TOTAL:-560} - SECONDS)); [ $L -gt 30 ] || return
  timeout $L python3 scripts/prove_functional_context.py --out $F-$1 --recipe h200-4k-attended --models ssa --eval-only \
    --checkpoint $F/ssa --needle-routing --tasks $2 --eval-lengths $3 --depths ${DEPTHS:-0.2 0.4 0.6 0.8} $EXTRA 2>&1 \
    | grep -E "train.eval: niah|Error|\|" | grep -v "^Command"
  echo "$1 rc=${PIPESTATUS[0]} t=$SECONDS"
  tar czf $O/fc36.tgz ${F}-s*/*.json ${F}-s*/*/eval/*.json* ${F}-m*/*.json ${F}-m*/*/eval/*.json* devrun/fc36.sh 2>/dev/null
}
run s16 niah_single_1 "${LS:-16K 64K 256K}"
run m16 niah_multikey_2 "${LM:-16K 64K 256K 1M}"
echo "end t=$SECONDS"
