#!/bin/bash
# Issue 6, 2026-12-03 (third session): does eval-time YaRN (no fine-tuning) carry fc10's 16K retrieval to 64K-1M?
# fc10 measured ssa = dense = 0.58 at 16K and 0 at 64K: the limit is positional, not routing.
[ -n "$NOPIP" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
O=${OUT:-/tmp}; F=runs/fc; mkdir -p $F
(while sleep 15; do tar czf $O/fc11.tgz $F/*.json $F/*.md $F/*/metrics.jsonl $F/*/eval/results.json devrun/fc11.sh devrun/yarn_eval.py 2>/dev/null; done) & TAR=$!
timeout ${T:-330} python3 scripts/prove_functional_context.py --out $F --models ssa dense \
  --pretrain-min ${P1:-2.2} --pretrain-override model.hf_config.rope_theta=100000000.0 train.steps=1100 \
  --experiment functional_context_4k --train-len 4096 --time-budget-min ${P2:-3.2} \
  --ssa-override attention.ssa.local_window=256 attention.ssa.topk_blocks=16 attention.ssa.routing=distill \
  attention.ssa.distill_blocks=0 --eval-lengths ${EL:-16K} --tasks niah_single_1 --depths 0.25 0.5 0.75 --samples ${NS:-4} \
  --max-new-tokens 12 --dense-max-len 64K $EXTRA
echo "rc=$? t=$SECONDS"
timeout ${T2:-230} python3 devrun/yarn_eval.py $F 4096 ${VARIANTS:-ssa:64K:16:1 ssa:1M:256:1 ssa:16K:4:1 ssa:256K:64:1 dense:16K:4:1 dense:64K:16:1 ssa:64K:16:d ssa:1M:256:d ssa:64K:32:1 dense:64K:16:d}
echo "rc=$? t=$SECONDS"; kill $TAR; tar czf $O/fc11.tgz $F/*.json $F/*.md $F/*/metrics.jsonl $F/*/eval/results.json $F/yarn/*/results.json devrun/fc11.sh devrun/yarn_eval.py 2>/dev/null; echo "end t=$SECONDS"
