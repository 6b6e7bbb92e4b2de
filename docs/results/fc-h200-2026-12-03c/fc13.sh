#!/bin/bash
# Issue 6, for the next session (written 2026-12-03, third session): fc10's recipe with the two fixes that session
# found, in one call (~7 min): beams of at least 64 nodes (attention.ssa.beam_min=64: no effect on the 4K training,
# where the search is exhaustive; saved into the checkpoint and used by the evaluation) and eval-time YaRN of factor
# length / 4096 per length (--eval-yarn). Then the same checkpoint without YaRN at 64K and 1M (--eval-only).
#   bash devrun/fc13.sh                 (MODELS="swa dense" for the baselines; YARN=no-temperature to compare)
#   POSE=1048576 YARN=off bash devrun/fc13.sh   (stage 2 with PoSE-style position skips up to 1M instead of YaRN:
#                                                train.position_skip, every model of the call)
[ -n "$NOPIP" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
O=${OUT:-/tmp}; F=${F:-runs/fc}; mkdir -p $F
[ -f devrun/functional-context.json ] && cp devrun/functional-context.json $F/
(while sleep 15; do tar czf $O/fc13.tgz $F/*.json $F/*.md $F/*.png $F/*/metrics.jsonl $F/*/eval/*/results.json devrun/fc13.sh 2>/dev/null; done) & TAR=$!
COMMON="--tasks niah_single_1 --depths 0.25 0.5 0.75 --samples ${NS:-4} --max-new-tokens 12 --dense-max-len 64K --train-len 4096"
timeout ${T:-450} python3 scripts/prove_functional_context.py --out $F --models ${MODELS:-ssa} \
  --pretrain-min ${P1:-2.2} --pretrain-override model.hf_config.rope_theta=100000000.0 train.steps=1100 \
  --experiment functional_context_4k --time-budget-min ${P2:-3.2} \
  --ssa-override attention.ssa.local_window=256 attention.ssa.topk_blocks=16 attention.ssa.routing=distill \
  attention.ssa.distill_blocks=0 attention.ssa.beam_min=64 --swa-override attention.ssa.local_window=256 \
  ${POSE:+--override train.position_skip=$POSE} \
  --eval-lengths ${EL:-16K 64K 256K 1M} --eval-yarn ${YARN:-default} $COMMON $EXTRA
echo "rc=$? t=$SECONDS"; cp $F/functional-context.json $F/functional-context-yarn.json
timeout ${T2:-100} python3 scripts/prove_functional_context.py --out $F --models ssa --eval-only \
  --eval-lengths ${EL2:-64K 1M} --eval-yarn off $COMMON $EXTRA
echo "rc=$? t=$SECONDS"; kill $TAR; tar czf $O/fc13.tgz $F/*.json $F/*.md $F/*.png $F/*/metrics.jsonl $F/*/eval/*/results.json $F/*/eval/results.json devrun/fc13.sh 2>/dev/null; echo "end t=$SECONDS"
