#!/bin/bash
# Issue 6, for the next session (written 2026-12-03, fourth session): fc15's recipe (--recipe h200-4k) with the
# positional fix trained in: position skips up to 1M in stage 2 (train.position_skip), the ssa model alone (fc14
# ran it side by side with four other trainings and starved it). Evaluated at true positions (no YaRN), then
# the same checkpoint with YaRN without temperature (fc15's best) at 64K-1M. ~7 min.
#   bash devrun/fc16.sh                      (POSE=262144 for skips up to 256K; MODELS="ssa dense" adds dense)
[ -n "$NOPIP" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
O=${OUT:-/tmp}; F=${F:-runs/pose}; mkdir -p $F $O
pack() { tar czf $O/fc16.tgz runs/*/*.json runs/*/*.md runs/*/*.png runs/*/*/metrics.jsonl runs/*/*/train_summary.json runs/*/*/eval/results.json runs/*/*/eval/*/results.json devrun/fc16.sh 2>/dev/null; }
(while sleep 15; do pack; done) & TAR=$!
timeout ${T:-420} python3 scripts/prove_functional_context.py --out $F --recipe h200-4k --models ${MODELS:-ssa} \
  --override train.position_skip=${POSE:-1048576} --eval-yarn off --eval-lengths ${EL:-16K 64K 256K 1M} $EXTRA 2>&1 \
  | grep -v -i warn | grep -E "prove_|train.eval|Error|error|\|"
echo "pose rc=${PIPESTATUS[0]} t=$SECONDS"; pack
timeout ${T2:-120} python3 scripts/prove_functional_context.py --out ${F}-yarn --recipe h200-4k --models ssa --eval-only \
  --checkpoint $F/ssa --eval-yarn no-temperature --eval-lengths ${EL2:-64K 256K 1M} $EXTRA 2>&1 | grep -E "train.eval: niah|\|"
echo "yarn rc=${PIPESTATUS[0]} t=$SECONDS"; kill $TAR; pack; echo "end t=$SECONDS"
