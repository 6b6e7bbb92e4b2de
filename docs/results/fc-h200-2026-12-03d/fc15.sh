#!/bin/bash
# Issue 6, 2026-12-03 (fourth session), call 2: fc14 trained five stage-2 models side by side and starved the SSA
# ones (253/322 of 380 steps). Here the deliverable command, one model at a time: ssa (beam_min 64), swa, dense,
# evaluated with eval-time YaRN per length (factor L / 4096). Then the selector's cost of beam_min in what time is left.
[ -n "$NOPIP" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
O=${OUT:-/tmp}; F=runs/fc; mkdir -p $F $O/sel
pack() { tar czf $O/fc15.tgz runs/*/*.json runs/*/*.md runs/*/*.png runs/*/*/metrics.jsonl runs/*/*/train_summary.json runs/*/*/eval/results.json runs/*/*/eval/*/results.json devrun/fc15.sh 2>/dev/null; }
(while sleep 15; do pack; done) & TAR=$!
timeout ${T:-540} python3 scripts/prove_functional_context.py --out $F --models ${MODELS:-ssa swa dense} \
  --pretrain-min ${P1:-2.2} --pretrain-override model.hf_config.rope_theta=100000000.0 train.steps=1100 \
  --experiment functional_context_4k --train-len 4096 --time-budget-min ${P2:-3.2} \
  --ssa-override attention.ssa.local_window=256 attention.ssa.topk_blocks=16 attention.ssa.routing=distill \
  attention.ssa.distill_blocks=0 attention.ssa.beam_min=64 --swa-override attention.ssa.local_window=256 \
  --eval-lengths ${EL:-16K 64K 256K 1M} --eval-yarn ${YARN:-default} --tasks niah_single_1 --depths 0.25 0.5 0.75 \
  --samples ${NS:-4} --max-new-tokens 12 --dense-max-len 64K $EXTRA 2>&1 | grep -v -i warn | grep -E "prove_|train.eval|Error|error|\|" 
echo "fc rc=${PIPESTATUS[0]} t=$SECONDS"; pack
L=$((580 - SECONDS)); [ $L -gt 30 ] && [ -z "$NOSEL" ] && timeout $L python3 scripts/bench_selector.py --n 1048576 4194304 --check --ref-max 0 --beam-min 1 16 64 --out $O/sel
kill $TAR; pack; echo "end t=$SECONDS"
