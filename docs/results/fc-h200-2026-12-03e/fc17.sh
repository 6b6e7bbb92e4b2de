#!/bin/bash
# Issue 6 (2026-12-03, fifth session): fc15's recipe (--recipe h200-4k) with NoPE lookup layers: stage 1 (dense,
# 1K) and stage 2 (ssa, 4K) with model.nope_layers=$NL (default the odd layers, as the CPU rotary study favoured),
# stage 1 longer ($P1S steps; NoPE's stage 1 learnt slower in fc7). ssa alone. Evaluated at true positions (no
# YaRN), then the same checkpoint with YaRN without temperature (it acts on the RoPE layers only) at 64K-1M.
#   bash devrun/fc17.sh        (~9 min)
[ -n "$NOPIP" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
O=${OUT:-/tmp}; F=${F:-runs/nope}; mkdir -p $F $O
pack() { tar czf $O/fc17.tgz runs/*/*.json runs/*/*.md runs/*/*.png runs/*/*/metrics.jsonl runs/*/*/train_summary.json runs/*/*/eval/results.json runs/*/*/eval/*/results.json devrun/fc17.sh 2>/dev/null; }
(while sleep 15; do pack; done) & TAR=$!
timeout ${T:-440} python3 scripts/prove_functional_context.py --out $F --recipe h200-4k --models ${MODELS:-ssa} \
  --pretrain-min ${P1:-3.4} --pretrain-override model.hf_config.rope_theta=100000000.0 train.steps=${P1S:-1800} \
  "model.nope_layers=${NL:-[1,3,5,7,9]}" --eval-yarn off --eval-lengths ${EL:-16K 64K 256K 1M} $EXTRA 2>&1 \
  | grep -v -i warn | grep -E "prove_|train.eval|NoPE|Error|error|\|"
echo "nope rc=${PIPESTATUS[0]} t=$SECONDS"; pack
timeout ${T2:-120} python3 scripts/prove_functional_context.py --out ${F}-yarn --recipe h200-4k --models ssa --eval-only \
  --checkpoint $F/ssa --eval-yarn no-temperature --eval-lengths ${EL2:-64K 256K 1M} $EXTRA 2>&1 | grep -E "train.eval: niah|\|"
echo "yarn rc=${PIPESTATUS[0]} t=$SECONDS"; kill $TAR; pack; echo "end t=$SECONDS"
