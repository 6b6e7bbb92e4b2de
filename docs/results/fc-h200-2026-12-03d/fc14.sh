#!/bin/bash
# Issue 6, 2026-12-03 (fourth session), one call: the selector's cost of beam_min at 1M/4M, then stage 1 once and
# five stage-2 trainings side by side from it (prove_functional_context.py --jobs / --pretrained):
#   runs/fc:   ssa (beam_min 64), swa, dense; evaluated with eval-time YaRN per length (factor L / 4096)
#   runs/pose: ssa (beam_min 64), dense trained with position skips up to 1M (train.position_skip); no YaRN
#   runs/noyarn: runs/fc's ssa checkpoint without YaRN at 64K / 1M
[ -n "$NOPIP" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
O=${OUT:-/tmp}; mkdir -p runs/fc runs/pose runs/noyarn $O/sel
pack() { tar czf $O/fc14.tgz runs/*/*.json runs/*/*.md runs/*/*.png runs/*/*/metrics.jsonl runs/*/*/log.txt runs/*/*/train_summary.json runs/*/*/eval/results.json runs/*/*/eval/*/results.json devrun/fc14.sh 2>/dev/null; }
(while sleep 15; do pack; done) & TAR=$!
[ -n "$NOSEL" ] || timeout 100 python3 scripts/bench_selector.py --n 1048576 4194304 --check --ref-max 0 --beam-min 1 16 64 --out $O/sel
echo "selector rc=$? t=$SECONDS"
COMMON="--tasks niah_single_1 --depths 0.25 0.5 0.75 --samples ${NS:-4} --max-new-tokens 12 --dense-max-len 64K
  --train-len 4096 --experiment functional_context_4k --time-budget-min ${P2:-4.5}
  --ssa-override attention.ssa.local_window=256 attention.ssa.topk_blocks=16 attention.ssa.routing=distill
  attention.ssa.distill_blocks=0 attention.ssa.beam_min=64 --swa-override attention.ssa.local_window=256 $EXTRA"
timeout ${T:-420} python3 scripts/prove_functional_context.py --out runs/fc --models ssa swa dense --jobs 3 \
  --pretrain-min ${P1:-2.2} --pretrain-override model.hf_config.rope_theta=100000000.0 train.steps=1100 \
  --eval-lengths ${EL:-16K 64K 256K 1M} --eval-yarn ${YARN:-default} $COMMON > runs/fc/log.txt 2>&1 &
MAIN=$!
S1=$(pwd)/runs/fc/pretrain
until [ -f $S1/train_summary.json ] || ! kill -0 $MAIN 2>/dev/null; do sleep 2; done
echo "stage 1 done t=$SECONDS"; cat $S1/train_summary.json | head -5
P=$(python3 -c "import json;print(json.load(open('$S1/train_summary.json'))['checkpoint'])")/model
timeout ${T:-420} python3 scripts/prove_functional_context.py --out runs/pose --models ssa dense --jobs 2 --pretrained $P \
  --override train.position_skip=${POSE:-1048576} --eval-lengths ${EL:-16K 64K 256K 1M} $COMMON > runs/pose/log.txt 2>&1 &
POSEJOB=$!
wait $MAIN; echo "fc rc=$? t=$SECONDS"
timeout ${T2:-120} python3 scripts/prove_functional_context.py --out runs/noyarn --models ssa --eval-only \
  --checkpoint runs/fc/ssa --eval-lengths ${EL2:-64K 1M} $COMMON > runs/noyarn/log.txt 2>&1
echo "noyarn rc=$? t=$SECONDS"
wait $POSEJOB; echo "pose rc=$? t=$SECONDS"
kill $TAR; pack; tail -n 3 runs/*/log.txt; cat runs/*/functional-context.md; echo "end t=$SECONDS"
