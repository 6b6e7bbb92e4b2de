#!/bin/bash
# Issue 6, for the next session (written 2026-12-03, fifth session): fc15's model (--recipe h200-4k, ssa alone)
# evaluated with far blocks at one fixed rotary distance (attention.ssa.far_distance, eval time only, no YaRN):
# a query then never meets a distance above max(256, D), the range stage 2 trained at 4K. D = $D (1024), then
# D2 (3072) on the same checkpoint, then fc15's best setting (YaRN without temperature) at 256K and 1M, so the
# three readings come from one trained model. ~9 min (a 40-s GPU check of the far path first).
#   bash devrun/fc20.sh
[ -n "$NOPIP" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
O=${OUT:-/tmp}; F=${F:-runs/far}; mkdir -p $F $O
pack() { tar czf $O/fc20.tgz runs/*/*.json runs/*/*.md runs/*/*.png runs/*/*/metrics.jsonl runs/*/*/train_summary.json runs/*/*/eval/results.json runs/*/*/eval/*/results.json devrun/fc20.sh 2>/dev/null; }
(while sleep 15; do pack; done) & TAR=$!
EL=${EL:-16K 64K 256K 1M}
# first, ~40 s: the far path on the GPU (bf16 Triton op vs fp32 reference, out and grads; tiny HF model prefill and
# generate), so that a zero below can be told from a GPU-only bug
[ -n "$NOCHECK" ] || timeout 60 python3 docs/results/fc-h200-2026-12-03e/gpucheck.py 2>&1 | grep -E "op |hf |generate|done|Error"
timeout ${T:-370} python3 scripts/prove_functional_context.py --out $F --recipe h200-4k --models ssa \
  --eval-yarn off --eval-ssa far_distance=${D:-1024} --eval-lengths $EL $EXTRA 2>&1 \
  | grep -v -i warn | grep -E "prove_|train.eval: niah|Error|error|\|"
echo "far rc=${PIPESTATUS[0]} t=$SECONDS"; pack
timeout ${T2:-110} python3 scripts/prove_functional_context.py --out ${F}-d2 --recipe h200-4k --models ssa --eval-only \
  --checkpoint $F/ssa --eval-yarn off --eval-ssa far_distance=${D2:-3072} --eval-lengths $EL $EXTRA 2>&1 | grep -E "train.eval: niah|\|"
echo "far2 rc=${PIPESTATUS[0]} t=$SECONDS"; pack
timeout ${T3:-60} python3 scripts/prove_functional_context.py --out ${F}-yarn --recipe h200-4k --models ssa --eval-only \
  --checkpoint $F/ssa --eval-yarn no-temperature --eval-lengths ${EL3:-256K 1M} $EXTRA 2>&1 | grep -E "train.eval: niah|\|"
echo "yarn rc=${PIPESTATUS[0]} t=$SECONDS"; kill $TAR; pack; echo "end t=$SECONDS"
