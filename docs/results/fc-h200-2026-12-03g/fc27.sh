#!/bin/bash
# Issue 6, for the next session (written 2026-12-03, seventh session): fc25's run (--recipe h200-4k-far, stage 2
# 660 steps capped at 4.4 min: 620 ran) evaluated with beams of 256 at 256K and 1M (eval-time only: 4K training
# rows have no coarse pyramid level for the beam to prune), then the same checkpoint at 1M with the trained beam of
# 64, paired sample by sample. fc25/fc26 found the 1M misses to be routing misses (routing.py). Copy to devrun/,
# carry .whl and devrun (~9 min):  bash devrun/fc27.sh
# Eighth session: 12 depths x 1 sample instead of the recipe's 3 x 4 (DEPTHS below), and train.eval now records the
# beam trace (needle_lost: read with scripts/needle_report.py). CPU smoke: NOPIP=1 PYTHONPATH=$PWD EXTRA=--smoke
#   STEPS=2 EL="1024 2048" EL2=2048 DEPTHS="0.25 0.75" OUT=/tmp/o bash devrun/fc27.sh
[ -n "$NOPIP" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
O=${OUT:-/tmp}; F=${F:-runs/fc}; mkdir -p $F $O
# 12 needle positions, one sample each: the samples of one depth share the haystack and the position (only the
# needle's key and value differ), so 3 depths x 4 samples were ~3 trials, not 12 (eighth session)
DEPTHS=${DEPTHS:-"0.08 0.16 0.24 0.32 0.4 0.48 0.56 0.64 0.72 0.8 0.88 0.96"}
pack() { tar czf $O/fc27.tgz $F*/*.json $F*/*.md $F*/*.png $F*/*/metrics.jsonl $F*/*/train_summary.json $F*/*/eval/*.json* $F*/*/eval/*/*.json* devrun/fc27.sh 2>/dev/null; }
(while sleep 10; do pack; done) & TAR=$!
timeout ${T:-480} python3 scripts/prove_functional_context.py --out $F --recipe h200-4k-far --models ssa --needle-routing \
  --train-steps ${STEPS:-660} --time-budget-min ${MIN:-4.4} --eval-ssa ${BEAM:-beam_min=256} --eval-lengths ${EL:-256K 1M} \
  --depths $DEPTHS --samples 1 $EXTRA 2>&1 | grep -v -i warn | grep -E "prove_|train.eval: niah|Error|error|\|"
echo "ssa rc=${PIPESTATUS[0]} t=$SECONDS"; pack
L=$((${TOTAL:-560} - SECONDS)); if [ $L -gt 30 ]; then
  timeout $L python3 scripts/prove_functional_context.py --out ${F}-beam64 --recipe h200-4k-far --models ssa --eval-only \
    --checkpoint $F/ssa --needle-routing --eval-lengths ${EL2:-1M} --depths $DEPTHS --samples 1 $EXTRA 2>&1 | grep -E "train.eval: niah|Error|\|"
fi
kill $TAR; pack; echo "end t=$SECONDS"
