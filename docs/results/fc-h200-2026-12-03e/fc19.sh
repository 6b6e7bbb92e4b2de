#!/bin/bash
# Issue 6, for the next session (written 2026-12-03, fifth session). fc15 (stage 2 at 4K) read 0.50 at 256K with
# YaRN without temperature, i.e. at YaRN factor 64, and 0.08 at 1M (factor 256). Stage 2 here runs at 8K rows
# (factor 128 at 1M, 32 at 256K), $MB rows a step (default 6: ~0.6 s a step estimated, 380 steps within the
# 4.6 min budget; 8 rows would be ~0.8 s), ssa alone, then niah_single_1 and niah_multikey_2 at 16K-1M with YaRN
# without temperature (--eval-yarn auto). ~8 min.
#   bash devrun/fc19.sh            (TL=16384 MB=2 for 16K rows; check the step time in the log first)
[ -n "$NOPIP" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
O=${OUT:-/tmp}; F=${F:-runs/fc8k}; mkdir -p $F $O
pack() { tar czf $O/fc19.tgz runs/*/*.json runs/*/*.md runs/*/*.png runs/*/*/metrics.jsonl runs/*/*/train_summary.json runs/*/*/eval/results.json runs/*/*/eval/*/results.json devrun/fc19.sh 2>/dev/null; }
(while sleep 15; do pack; done) & TAR=$!
timeout ${T:-540} python3 scripts/prove_functional_context.py --out $F --recipe h200-4k --models ssa \
  --train-len ${TL:-8192} --time-budget-min ${TB:-4.6} --override train.micro_batch=${MB:-6} --eval-yarn auto \
  --tasks niah_single_1 niah_multikey_2 --eval-lengths ${EL:-16K 64K 256K 1M} $EXTRA 2>&1 \
  | grep -v -i warn | grep -E "prove_|train.eval|step |Error|error|\|"
echo "fc19 rc=${PIPESTATUS[0]} t=$SECONDS"; kill $TAR; pack; echo "end t=$SECONDS"
