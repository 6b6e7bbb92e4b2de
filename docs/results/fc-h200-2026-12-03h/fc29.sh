#!/bin/bash
# Issue 6, for the next device session (written 2026-12-03, eighth session), after fc28: the h200-4k-far recipe with
# the byte-level BPE tokenizer (--tokenizer bpe: python -m data.bpe into runs/fc/tokenizer first, ~20 s) and the
# stage-1 data that fc28 found best for multikey (PRE; default: 8 random extra lookups, fc28's run b / e), then
# niah_single_1 at 16K / 256K / 1M and niah_multikey_2 at 4K / 16K / 64K on the same checkpoint, with the beam trace.
# Lengths are BPE tokens (~3.5-3.8 bytes each). Copy to devrun/, carry .whl and devrun (~9.5 min held):
#   bash devrun/fc29.sh            (TOK=byte: the same with the byte tokenizer)
# CPU smoke (~3 min: stage 1 runs the 1,100 steps given here): NOPIP=1 PYTHONPATH=$PWD EXTRA=--smoke EL="1024 2048"
#   EL2=1024 DEPTHS="0.25 0.75" OUT=/tmp/o T=400 TOTAL=520 bash devrun/fc29.sh
[ -n "$NOPIP" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
O=${OUT:-/tmp}; F=${F:-runs/fc}; mkdir -p $F $O
# 12 needle positions, one sample each: the samples of one depth share the haystack and the position (only the
# needle's key and value differ), so 3 depths x 4 samples were ~3 trials, not 12 (eighth session)
DEPTHS=${DEPTHS:-"0.08 0.16 0.24 0.32 0.4 0.48 0.56 0.64 0.72 0.8 0.88 0.96"}
PRE=${PRE:-"data.synthetic.extra_queries=8 data.synthetic.extra_order=random"}
pack() { tar czf $O/fc29.tgz $F*/*.json $F*/*.md $F*/*.png $F*/*/metrics.jsonl $F*/*/train_summary.json $F*/*/eval/*.json* $F/tokenizer/bpe.json devrun/fc29.sh 2>/dev/null; }
(while sleep 10; do pack; done) & TAR=$!
timeout ${T:-430} python3 scripts/prove_functional_context.py --out $F --recipe h200-4k-far --models ssa --needle-routing \
  --tokenizer ${TOK:-bpe} --pretrain-override model.hf_config.rope_theta=100000000.0 train.steps=1100 $PRE \
  --tasks niah_single_1 --eval-lengths ${EL:-16K 256K 1M} --eval-ssa ${BEAM:-beam_min=64} --depths $DEPTHS --samples 1 $EXTRA 2>&1 \
  | grep -v -i warn | grep -E "prove_|train.eval: niah|Error|error|\|"
echo "ssa rc=${PIPESTATUS[0]} t=$SECONDS"; pack
L=$((${TOTAL:-560} - SECONDS)); if [ $L -gt 30 ]; then
  timeout $L python3 scripts/prove_functional_context.py --out ${F}-mk --recipe h200-4k-far --models ssa --eval-only \
    --checkpoint $F/ssa --needle-routing --tasks niah_multikey_2 --eval-lengths ${EL2:-4K 16K 64K} --depths $DEPTHS --samples 1 $EXTRA 2>&1 \
    | grep -E "train.eval: niah|Error|\|"
fi
kill $TAR; pack; echo "end t=$SECONDS"
