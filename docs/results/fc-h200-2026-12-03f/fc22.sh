#!/bin/bash
# Issue 6 (sixth session): a second run of fc21's recipe, now named --recipe h200-4k-far, ssa alone, with 4M added
# (fc21's separate 4M eval ran out of its 70 s). Tells fc21's 0.92/0.83/0.83/0.33 from seed noise.
#   bash devrun/fc22.sh
[ -n "$NOPIP" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
O=${OUT:-/tmp}; F=${F:-runs/far22}; mkdir -p $F $O
pack() { tar czf $O/fc22.tgz runs/*/*.json runs/*/*.md runs/*/*.png runs/*/*/metrics.jsonl runs/*/*/train_summary.json runs/*/*/eval/results.json runs/*/*/eval/*/results.json devrun/fc22.sh 2>/dev/null; }
(while sleep 15; do pack; done) & TAR=$!
timeout ${T:-540} python3 scripts/prove_functional_context.py --out $F --recipe h200-4k-far --models ssa \
  --eval-lengths ${EL:-16K 64K 256K 1M 4M} $EXTRA 2>&1 | grep -v -i warn | grep -E "prove_|train.eval: niah|Error|error|\|"
echo "rc=${PIPESTATUS[0]} t=$SECONDS"; kill $TAR; pack; echo "end t=$SECONDS"
