#!/bin/bash
# Issue 6 (written 2026-12-03, sixth session): fc20 showed far_distance=1024 at eval time alone lifts fc15's recipe
# to 0.92/0.75/0.58/0.17 at 16K/64K/256K/1M. Here stage 2 TRAINS under the same convention
# (attention.ssa.far_distance=1024 added to the recipe's --ssa-override, whose other entries are repeated because a
# list given on the command line replaces the recipe's), then: niah_single_1 16K-1M, 4M, niah_multikey_2 64K-1M.
#   bash devrun/fc21.sh
[ -n "$NOPIP" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
O=${OUT:-/tmp}; F=${F:-runs/far21}; mkdir -p $F $O
pack() { tar czf $O/fc21.tgz runs/*/*.json runs/*/*.md runs/*/*.png runs/*/*/metrics.jsonl runs/*/*/train_summary.json runs/*/*/eval/results.json runs/*/*/eval/*/results.json devrun/fc21.sh 2>/dev/null; }
(while sleep 15; do pack; done) & TAR=$!
SSA="attention.ssa.local_window=256 attention.ssa.topk_blocks=16 attention.ssa.routing=distill attention.ssa.distill_blocks=0 attention.ssa.beam_min=64"
timeout ${T:-380} python3 scripts/prove_functional_context.py --out $F --recipe h200-4k --models ssa \
  --ssa-override $SSA attention.ssa.far_distance=${D:-1024} $TRAIN_EXTRA \
  --eval-yarn off --eval-lengths ${EL:-16K 64K 256K 1M} $EXTRA 2>&1 \
  | grep -v -i warn | grep -E "prove_|train.eval: niah|Error|error|\|"
echo "train rc=${PIPESTATUS[0]} t=$SECONDS"; pack
timeout ${T2:-70} python3 scripts/prove_functional_context.py --out ${F}-4m --recipe h200-4k --models ssa --eval-only \
  --checkpoint $F/ssa --eval-yarn off --eval-lengths 4M $EXTRA 2>&1 | grep -E "train.eval: niah|Error|\|"
echo "4m rc=${PIPESTATUS[0]} t=$SECONDS"; pack
timeout ${T3:-120} python3 scripts/prove_functional_context.py --out ${F}-mk --recipe h200-4k --models ssa --eval-only \
  --checkpoint $F/ssa --eval-yarn off --tasks niah_multikey_2 --eval-lengths ${EL3:-64K 256K 1M} $EXTRA 2>&1 | grep -E "train.eval: niah|Error|\|"
echo "mk rc=${PIPESTATUS[0]} t=$SECONDS"; kill $TAR; pack; echo "end t=$SECONDS"
