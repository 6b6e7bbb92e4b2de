#!/bin/bash
# Issue 6, seventh session (2026-12-03): fc23 retrained --recipe h200-4k-far and got 0.92 / 0.67 / 0.67 / 0.00 at
# 16K / 64K / 256K / 1M (fc22, same recipe: 1.00 / 0.83 / 0.92 / 0.42), multikey_2 0 even at 4K, and stage 2's loss
# still falling at step 380 (0.90 -> 0.55 nats per answer token). Here: stage 2 trained 660 steps (1.7x), ssa alone,
# --needle-routing, 16K / 256K / 1M; then multikey_2 at 4K / 16K on the same checkpoint. Copy to devrun/, carry .whl
# and devrun (~9.5 min):  bash devrun/fc25.sh
[ -n "$NOPIP" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
O=${OUT:-/tmp}; F=${F:-runs/fc}; mkdir -p $F $O
pack() { tar czf $O/fc25.tgz $F*/*.json $F*/*.md $F*/*.png $F*/*/metrics.jsonl $F*/*/train_summary.json $F*/*/eval/*.json* $F*/*/eval/*/*.json* devrun/fc25.sh 2>/dev/null; }
(while sleep 15; do pack; done) & TAR=$!
timeout ${T:-515} python3 scripts/prove_functional_context.py --out $F --recipe h200-4k-far --models ssa --needle-routing \
  --train-steps ${STEPS:-660} --time-budget-min ${MIN:-4.4} --eval-lengths ${EL:-16K 256K 1M} $EXTRA 2>&1 \
  | grep -v -i warn | grep -E "prove_|train.eval: niah|Error|error|\|"
echo "ssa rc=${PIPESTATUS[0]} t=$SECONDS"; pack
L=$((${TOTAL:-565} - SECONDS)); if [ $L -gt 30 ]; then
  timeout $L python3 scripts/prove_functional_context.py --out ${F}-mk --recipe h200-4k-far --models ssa --eval-only \
    --checkpoint $F/ssa --needle-routing --tasks niah_multikey_2 --eval-lengths ${EL1:-4K 16K} $EXTRA 2>&1 | grep -E "train.eval: niah|Error|\|"
fi
kill $TAR; pack; echo "end t=$SECONDS"
