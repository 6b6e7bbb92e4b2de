#!/bin/bash
# Issue 6, seventh session (2026-12-03): is the 1M failure a routing miss that wider beams remove? fc25's wrong
# answers at 1M were the 4 samples of one needle position (depth 0.25, block 4096), where layer 2 (the layer that
# routes the needle at every shorter length) listed the needle block for 0-12% of (kv head, answer token) pairs
# against 40-75% on the right answers. One checkpoint (--recipe h200-4k-far, 380 stage-2 steps cut to ~2.6 min),
# 1M, 2 samples per depth, with beam_min 64 (as trained) and then 256, both with --needle-routing. Copy to devrun/,
# carry .whl and devrun (~6 min, for the last ~480 s of a session's device time):  bash devrun/fc26.sh
[ -n "$NOPIP" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
O=${OUT:-/tmp}; F=${F:-runs/fc}; mkdir -p $F $O
pack() { tar czf $O/fc26.tgz $F*/*.json $F*/*.md $F*/*/metrics.jsonl $F*/*/train_summary.json $F*/*/eval/*.json* $F*/*/eval/*/*.json* devrun/fc26.sh 2>/dev/null; }
(while sleep 10; do pack; done) & TAR=$!
timeout ${T:-330} python3 scripts/prove_functional_context.py --out $F --recipe h200-4k-far --models ssa --needle-routing \
  --time-budget-min ${MIN:-2.6} --samples 2 --eval-lengths ${EL:-1M} $EXTRA 2>&1 | grep -v -i warn | grep -E "prove_|train.eval: niah|Error|error"
echo "ssa rc=${PIPESTATUS[0]} t=$SECONDS"; pack
L=$((${TOTAL:-375} - SECONDS)); if [ $L -gt 25 ]; then
  timeout $L python3 scripts/prove_functional_context.py --out ${F}-beam256 --recipe h200-4k-far --models ssa --eval-only \
    --checkpoint $F/ssa --needle-routing --samples 2 --eval-ssa beam_min=256 --eval-lengths ${EL:-1M} $EXTRA 2>&1 | grep -E "train.eval: niah|Error"
fi
kill $TAR; pack; echo "end t=$SECONDS"
