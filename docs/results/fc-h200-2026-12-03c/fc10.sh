#!/bin/bash
# Issue 6, for the next session (written 2026-12-03): the deliverable run of scripts/prove_functional_context.py
# with the recipe of fc8 (stage 1 dense at 1K, theta 1e8; stage 2 experiment=functional_context_4k, the ssa model
# with the small budget and routing=distill, swa with the same 256-token window), evaluated by greedy decoding
# (train.eval) at 16K-1M. One call per model set, each with its own stage 1 (nothing persists between calls):
#   MODELS=ssa bash devrun/fc10.sh            (~8 min)
#   MODELS="swa dense" bash devrun/fc10.sh    (~8 min; copy the first call's functional-context.json to
#                                              devrun/ first, so the JSON it writes holds every model)
# Results (json, md, png, training summaries) tarred into $OUT every 15 s. EXTRA: more script arguments.
[ -n "$NOPIP" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
O=${OUT:-/tmp}; F=runs/fc; mkdir -p $F
[ -f devrun/functional-context.json ] && cp devrun/functional-context.json $F/
(while sleep 15; do tar czf $O/fc10.tgz $F/*.json $F/*.md $F/*.png $F/*/metrics.jsonl $F/*/eval/results.json devrun/fc10.sh 2>/dev/null; done) & TAR=$!
timeout ${T:-570} python3 scripts/prove_functional_context.py --out $F --models ${MODELS:-ssa} \
  --pretrain-min ${P1:-2.2} --pretrain-override model.hf_config.rope_theta=100000000.0 train.steps=1100 \
  --experiment functional_context_4k --train-len 4096 --time-budget-min ${P2:-3.2} \
  --ssa-override attention.ssa.local_window=256 attention.ssa.topk_blocks=16 attention.ssa.routing=distill \
  attention.ssa.distill_blocks=0 --swa-override attention.ssa.local_window=256 \
  --eval-lengths ${EL:-16K 64K 256K 1M} --depths 0.25 0.5 0.75 --samples ${NS:-4} --max-new-tokens 12 \
  --dense-max-len 64K $EXTRA
echo "rc=$? t=$SECONDS"; kill $TAR; tar czf $O/fc10.tgz $F/*.json $F/*.md $F/*.png $F/*/metrics.jsonl $F/*/eval/results.json devrun/fc10.sh 2>/dev/null; echo "end t=$SECONDS"
