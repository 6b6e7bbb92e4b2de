#!/bin/bash
# Issue 6, for the next session (written 2026-12-03, seventh session): fc25's run (--recipe h200-4k-far, stage 2
# 660 steps capped at 4.4 min: 620 ran) evaluated with beams of 256 at 256K and 1M (eval-time only: 4K training
# rows have no coarse pyramid level for the beam to prune), then the same checkpoint at 1M with the trained beam of
# 64, paired sample by sample. fc25/fc26 found the 1M misses to be routing misses (routing.py). Copy to devrun/,
# carry .whl and devrun (~9 min):  bash devrun/fc27.sh
[ -n "$NOPIP" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
O=${OUT:-/tmp}; F=${F:-runs/fc}; mkdir -p $F $O
pack() { tar czf $O/fc27.tgz $F*/*.json $F*/*.md $F*/*.png $F*/*/metrics.jsonl $F*/*/train_summary.json $F*/*/eval/*.json* $F*/*/eval/*/*.json* devrun/fc27.sh 2>/dev/null; }
(while sleep 10; do pack; done) & TAR=$!
timeout ${T:-480} python3 scripts/prove_functional_context.py --out $F --recipe h200-4k-far --models ssa --needle-routing \
  --train-steps ${STEPS:-660} --time-budget-min ${MIN:-4.4} --eval-ssa ${BEAM:-beam_min=256} --eval-lengths ${EL:-256K 1M} \
  $EXTRA 2>&1 | grep -v -i warn | grep -E "prove_|train.eval: niah|Error|error|\|"
echo "ssa rc=${PIPESTATUS[0]} t=$SECONDS"; pack
L=$((${TOTAL:-560} - SECONDS)); if [ $L -gt 30 ]; then
  timeout $L python3 scripts/prove_functional_context.py --out ${F}-beam64 --recipe h200-4k-far --models ssa --eval-only \
    --checkpoint $F/ssa --needle-routing --eval-lengths ${EL2:-1M} $EXTRA 2>&1 | grep -E "train.eval: niah|Error|\|"
fi
kill $TAR; pack; echo "end t=$SECONDS"
