#!/bin/bash
# Issue 6, tenth session (2026-12-04), after fc30: fc30's training (loss-gated stage 1 with 8 random extra lookups,
# stage 2 as fc25), then niah_single_1 at 1M with wider coarse beams. fc30 at 1M (beam 64 at every level): 0 of 12,
# the needle lost at level 2 for 0.72 of the first answer token's (layer, kv head) pairs; at 1M level 3 has 32
# nodes, level 2 256 candidates of which 64 were kept, and many heads ranked those by position, not content.
# A: beam_widths=[64,256,64] keeps every level-2 node (as 256K does); B: [64,256,256] also 256 at level 1.
# Copy to devrun/, carry .whl and devrun:  bash devrun/fc31.sh
[ -n "$NOPIP" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
O=${OUT:-/tmp}; F=${F:-runs/fc}; mkdir -p $F $O
DEPTHS=${DEPTHS:-"0.08 0.16 0.24 0.32 0.4 0.48 0.56 0.64 0.72 0.8 0.88 0.96"}
PRE=${PRE:-"model.hf_config.rope_theta=100000000.0 train.steps=1800 train.stop_at_loss=0.01 train.stop_at_loss_window=100 data.synthetic.extra_queries=8 data.synthetic.extra_order=random"}
pack() { tar czf $O/fc31.tgz $F*/*.json $F*/*.md $F*/*.png $F*/*/metrics.jsonl $F*/*/train_summary.json $F*/*/eval/*.json* devrun/fc31.sh 2>/dev/null; }
(while sleep 10; do pack; done) & TAR=$!
timeout ${T:-520} python3 scripts/prove_functional_context.py --out $F --recipe h200-4k-far --models ssa --needle-routing \
  --pretrain-min ${PMIN:-2.9} --pretrain-override $PRE --train-steps ${STEPS:-660} --time-budget-min ${MIN:-4.4} \
  --tasks niah_single_1 --eval-lengths ${EL1:-1M} --eval-ssa ${BA:-beam_widths=[64,256,64]} --depths $DEPTHS --samples 1 $EXTRA 2>&1 \
  | grep -v -i warn | grep -E "prove_|train.eval: niah|Error|error|\|"
echo "ssa rc=${PIPESTATUS[0]} t=$SECONDS"; pack
L=$((${TOTAL:-585} - SECONDS)); if [ $L -gt 30 ]; then
  timeout $L python3 scripts/prove_functional_context.py --out ${F}-1m --recipe h200-4k-far --models ssa --eval-only \
    --checkpoint $F/ssa --needle-routing --tasks niah_single_1 --eval-lengths ${EL2:-1M} --eval-ssa ${BB:-beam_widths=[64,256,256]} --depths $DEPTHS --samples 1 $EXTRA 2>&1 \
    | grep -E "train.eval: niah|Error|\|"
fi
kill $TAR; pack; echo "end t=$SECONDS"
