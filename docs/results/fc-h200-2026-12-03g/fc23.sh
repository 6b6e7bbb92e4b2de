#!/bin/bash
# Issue 6, for the next session (written 2026-12-03, sixth session). Copy to devrun/, carry .whl and devrun (~9.5 min):
#   bash devrun/fc23.sh
# 1. --recipe h200-4k-far, ssa alone (fc22's run again) with --needle-routing: per sample and layer, did the
#    tokens that wrote the answer route the needle's blocks? At 1M/4M this tells a routing miss (needle_routed
#    low on the wrong samples) from a reading miss (routed, digits still wrong).
# 2. The same checkpoint: niah_multikey_2 at 4K and 16K (learnt at all?), then at 1M with beam_min 256 (64 in
#    training), then with 32 routed blocks instead of 16 (eval time only), while time is left.
# Brings back runs/fc (JSON, every sample) for fc24.sh, which adds the swa and dense baselines to the same table.
[ -n "$NOPIP" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
O=${OUT:-/tmp}; F=${F:-runs/fc}; mkdir -p $F $O
pack() { tar czf $O/fc23.tgz $F*/*.json $F*/*.md $F*/*.png $F*/*/metrics.jsonl $F*/*/train_summary.json $F*/*/eval/results.json $F*/*/eval/*/results.json devrun/fc23.sh 2>/dev/null; }
(while sleep 15; do pack; done) & TAR=$!
timeout ${T:-480} python3 scripts/prove_functional_context.py --out $F --recipe h200-4k-far --models ssa --needle-routing \
  --eval-lengths ${EL:-16K 64K 256K 1M 4M} $EXTRA 2>&1 | grep -v -i warn | grep -E "prove_|train.eval: niah|Error|error|\|"
echo "ssa rc=${PIPESTATUS[0]} t=$SECONDS"; pack
# same checkpoint: is niah_multikey_2 learnt at all, at the training length 4K and at 16K (0 at 64K-1M in fc21)?
timeout 60 python3 scripts/prove_functional_context.py --out ${F}-mk --recipe h200-4k-far --models ssa --eval-only \
  --checkpoint $F/ssa --needle-routing --tasks niah_multikey_2 --eval-lengths ${EL1:-4K 16K} $EXTRA 2>&1 | grep -E "train.eval: niah|Error|\|"
echo "mk t=$SECONDS"; pack
# eval-time only, same checkpoint, while time lasts: wider beams (a routing miss of a diluted needle at coarse
# levels), then twice the routed blocks
for S in beam_min=256 topk_blocks=32; do
  L=$((${TOTAL:-565} - SECONDS)); [ $L -gt 45 ] || break
  timeout $L python3 scripts/prove_functional_context.py --out ${F}-${S/=/} --recipe h200-4k-far --models ssa --eval-only \
    --checkpoint $F/ssa --needle-routing --eval-ssa $S --eval-lengths ${EL2:-1M} $EXTRA 2>&1 | grep -E "train.eval: niah|Error|\|"
  echo "$S t=$SECONDS"; pack
done
kill $TAR; pack; echo "end t=$SECONDS"
