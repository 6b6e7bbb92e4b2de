#!/bin/bash
# Issue 6, for the next device session (written 2026-12-04, eleventh session): --recipe h200-4k-attended, i.e.
# h200-4k-wide with the router distilled toward the attention SSA computes (far blocks at far_distance; fc31..fc34
# distilled toward true distances and ranked 1M's coarse nodes by position), evaluated with beam_widths=[64,256,256]:
# niah_single_1 at 1M at 12 needle positions (compare fc33: 12/12, needle routed 0.34, lost at level 1 0.57), then
# niah_multikey_2 at 4K (fc32 0.17, fc33 0.25). Issue fc35b.sh the moment this call returns (the machine goes cold
# ~30 s after a call; runs/ goes with it). Copy both to devrun/, carry .whl and devrun:  bash devrun/fc35.sh
# CPU smoke (~5 min): NOPIP=1 PYTHONPATH=$PWD EXTRA=--smoke EL=2048 EL2=1024 DEPTHS="0.25 0.75" OUT=/tmp/o bash devrun/fc35.sh
[ -n "$NOPIP" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
O=${OUT:-/tmp}; F=${F:-runs/fc35}; mkdir -p $F $O
DEPTHS=${DEPTHS:-"0.08 0.16 0.24 0.32 0.4 0.48 0.56 0.64 0.72 0.8 0.88 0.96"}
pack() { tar czf $O/fc35.tgz $F*/*.json $F*/*.md $F*/*.png $F*/*/metrics.jsonl $F*/*/train_summary.json $F*/*/eval/*.json* devrun/fc35*.sh 2>/dev/null; }
(while sleep 10; do pack; done) & TAR=$!
timeout ${T:-545} python3 scripts/prove_functional_context.py --out $F --recipe ${RECIPE:-h200-4k-attended} --models ssa \
  --needle-routing --tasks niah_single_1 --eval-lengths ${EL:-1M} --depths $DEPTHS $EXTRA 2>&1 \
  | grep -v -i warn | grep -E "prove_|train.eval: niah|Error|error|\|" | grep -v "^Command"
echo "ssa rc=${PIPESTATUS[0]} t=$SECONDS"; pack
L=$((${TOTAL:-575} - SECONDS)); if [ $L -gt 25 ]; then
  timeout $L python3 scripts/prove_functional_context.py --out ${F}-mk --recipe ${RECIPE:-h200-4k-attended} --models ssa \
    --eval-only --checkpoint $F/ssa --needle-routing --tasks niah_multikey_2 --eval-lengths ${EL2:-4K} --depths $DEPTHS \
    $EXTRA 2>&1 | grep -E "train.eval: niah|Error|\|"
fi
kill $TAR; pack; echo "end t=$SECONDS"
