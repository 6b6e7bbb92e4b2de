#!/bin/bash
# Issue 6, tenth session (2026-12-04): the h200-4k-far recipe with fc28's best stage 1 (run b: 8 random extra
# lookups per multikey sample) and a loss-gated stage 1 (up to 1,800 steps of a 1,800-step cosine, stopping once
# the mean loss of 100 steps is <= 0.01; fc27's 1,100-step stage 1 ended at 0.10, fc25's at 0.013). Stage 2 as fc25
# (660 steps capped at 4.4 min). Then niah_multikey_2 at 4K / 16K first (cheap), niah_single_1 at 256K / 1M on the
# same checkpoint; 12 depths x 1 sample. Copy to devrun/, carry .whl and devrun:  bash devrun/fc30.sh
# CPU smoke: NOPIP=1 PYTHONPATH=$PWD EXTRA=--smoke EL1="1024" EL2="2048" DEPTHS="0.25 0.75" OUT=/tmp/o bash devrun/fc30.sh
[ -n "$NOPIP" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
O=${OUT:-/tmp}; F=${F:-runs/fc}; mkdir -p $F $O
DEPTHS=${DEPTHS:-"0.08 0.16 0.24 0.32 0.4 0.48 0.56 0.64 0.72 0.8 0.88 0.96"}
PRE=${PRE:-"model.hf_config.rope_theta=100000000.0 train.steps=1800 train.stop_at_loss=0.01 train.stop_at_loss_window=100 data.synthetic.extra_queries=8 data.synthetic.extra_order=random"}
pack() { tar czf $O/fc30.tgz $F*/*.json $F*/*.md $F*/*.png $F*/*/metrics.jsonl $F*/*/train_summary.json $F*/*/eval/*.json* devrun/fc30.sh 2>/dev/null; }
(while sleep 10; do pack; done) & TAR=$!
timeout ${T:-455} python3 scripts/prove_functional_context.py --out $F --recipe h200-4k-far --models ssa --needle-routing \
  --pretrain-min ${PMIN:-2.9} --pretrain-override $PRE --train-steps ${STEPS:-660} --time-budget-min ${MIN:-4.4} \
  --tasks niah_multikey_2 --eval-lengths ${EL1:-4K 16K} --depths $DEPTHS --samples 1 $EXTRA 2>&1 \
  | grep -v -i warn | grep -E "prove_|train.eval: niah|Error|error|\|"
echo "ssa rc=${PIPESTATUS[0]} t=$SECONDS"; pack
L=$((${TOTAL:-580} - SECONDS)); if [ $L -gt 30 ]; then
  timeout $L python3 scripts/prove_functional_context.py --out ${F}-1m --recipe h200-4k-far --models ssa --eval-only \
    --checkpoint $F/ssa --needle-routing --tasks niah_single_1 --eval-lengths ${EL2:-256K 1M} --depths $DEPTHS --samples 1 $EXTRA 2>&1 \
    | grep -E "train.eval: niah|Error|\|"
fi
kill $TAR; pack; echo "end t=$SECONDS"
