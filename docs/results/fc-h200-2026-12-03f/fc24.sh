#!/bin/bash
# Issue 6, for the next session (written 2026-12-03, sixth session), after fc23.sh: the swa and dense baselines of
# --recipe h200-4k-far (trained as in h200-4k, evaluated with YaRN as fc15 was) into the same --out, so that
# functional-context.json holds all three models (each model's command under "commands"); --docs writes the table
# into docs/functional_context.md. Before the call, unpack fc23's functional-context.json into runs/fc/ here and
# carry runs/fc with .whl and devrun (~8 min):
#   mkdir -p runs/fc && tar xzf <fc23 files_at>/fc23.tgz -C . runs/fc/functional-context.json && bash devrun/fc24.sh
[ -n "$NOPIP" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
O=${OUT:-/tmp}; F=${F:-runs/fc}; mkdir -p $F $O
[ -f $F/functional-context.json ] || echo "warning: no $F/functional-context.json from fc23: the table will lack ssa"
pack() { tar czf $O/fc24.tgz $F/*.json $F/*.md $F/*.png $F/*/metrics.jsonl $F/*/train_summary.json $F/*/eval/results.json $F/*/eval/*/results.json docs/functional_context.md docs/results/functional-context* devrun/fc24.sh 2>/dev/null; }
(while sleep 15; do pack; done) & TAR=$!
timeout ${T:-540} python3 scripts/prove_functional_context.py --out $F --recipe h200-4k-far --models swa dense --docs \
  ${EL:+--eval-lengths $EL} $EXTRA 2>&1 | grep -v -i warn | grep -E "prove_|train.eval: niah|Error|error|\|"
echo "rc=${PIPESTATUS[0]} t=$SECONDS"; kill $TAR; pack; echo "end t=$SECONDS"
