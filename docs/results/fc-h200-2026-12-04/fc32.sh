#!/bin/bash
# Issue 6, for the next device session (written 2026-12-04, tenth session): a third run of --recipe h200-4k-wide
# (fc31's), niah_single_1 at 1M with the recipe's beams (every level-2 node kept) at 12 needle positions, then
# niah_multikey_2 at 4K if time is left. Follow it at once with fc32b.sh (same machine while it is warm: runs/ stays)
# for the paired evaluations on this checkpoint. Copy both to devrun/, carry .whl and devrun:  bash devrun/fc32.sh
# CPU smoke (~5 min): NOPIP=1 PYTHONPATH=$PWD EXTRA=--smoke EL=2048 EL2=1024 DEPTHS="0.25 0.75" OUT=/tmp/o bash devrun/fc32.sh
[ -n "$NOPIP" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
O=${OUT:-/tmp}; F=${F:-runs/fc}; mkdir -p $F $O
DEPTHS=${DEPTHS:-"0.08 0.16 0.24 0.32 0.4 0.48 0.56 0.64 0.72 0.8 0.88 0.96"}
pack() { tar czf $O/fc32.tgz $F*/*.json $F*/*.md $F*/*.png $F*/*/metrics.jsonl $F*/*/train_summary.json $F*/*/eval/*.json* devrun/fc32*.sh 2>/dev/null; }
(while sleep 10; do pack; done) & TAR=$!
timeout ${T:-540} python3 scripts/prove_functional_context.py --out $F --recipe h200-4k-wide --models ssa --needle-routing \
  --tasks niah_single_1 --eval-lengths ${EL:-1M} --depths $DEPTHS $EXTRA 2>&1 \
  | grep -v -i warn | grep -E "prove_|train.eval: niah|Error|error|\|"
echo "ssa rc=${PIPESTATUS[0]} t=$SECONDS"; pack
L=$((${TOTAL:-585} - SECONDS)); if [ $L -gt 25 ]; then
  timeout $L python3 scripts/prove_functional_context.py --out ${F}-mk --recipe h200-4k-wide --models ssa --eval-only \
    --checkpoint $F/ssa --needle-routing --tasks niah_multikey_2 --eval-lengths ${EL2:-4K} --depths $DEPTHS $EXTRA 2>&1 \
    | grep -E "train.eval: niah|Error|\|"
fi
kill $TAR; pack; echo "end t=$SECONDS"
