#!/bin/bash
# Shared setup of the issue-6 device scripts (fc42*.sh on): source it. Installs the carried wheels once per machine,
# exports the environment, and defines
#   prove NAME SECONDS ARGS...  python scripts/prove_functional_context.py --out $F-NAME ARGS, at most SECONDS (and
#                               never past the call's $TOTAL), its log in $O/NAME.log, the result lines echoed
#   pack                        $O/$TAG.tgz of every $F* run's small files (json, md, png, metrics, eval samples)
#   probes DIR                  DIR/ssa's last checkpoint through scripts/needle_rank_probe.py ($RL lengths, default 4K
#                               16K; $O/ranks.json) and DIR/ssa's and DIR/dense's through scripts/probe_answers.py
#                               (teacher-forced, 16 samples at $PL tokens, default 4096; $O/probe.jsonl)
# Variables: F (run prefix, runs/fc42), O (output dir, $OUT), TAG (tarball name), TOTAL (call budget, s), EXTRA
# (appended to every prove, e.g. --smoke on CPU), NOPIP=1 (CPU smoke: no wheels).
[ -n "$NOPIP" ] || [ -d /tmp/site/hydra ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
F=${F:-runs/fc42}; O=${OUT:-/tmp}; TOTAL=${TOTAL:-570}; mkdir -p $O
pack() {
  tar czf $O/${TAG:-fc}.tgz $F*/*.json $F*/*.md $F*/*.png $F*/*/metrics.jsonl $F*/*/train_summary.json \
    $F*/*/eval/*.json* $F*/*/eval/*/*.json* $F*/*/log.txt 2>/dev/null
}
prove() {  # name, seconds, arguments
  local name=$1 limit=$2; shift 2
  local left=$((TOTAL - SECONDS)); [ $limit -lt $left ] || limit=$left
  [ $limit -gt 30 ] || { echo "$name: skipped (t=$SECONDS)"; return; }
  timeout $limit python3 scripts/prove_functional_context.py --out $F-$name "$@" $EXTRA > $O/$name.log 2>&1
  echo "$name rc=$? t=$SECONDS"
  grep -E "prove_functional_context: .*trained|train.eval: niah|Error|^\| (ssa|swa|dense) " $O/$name.log
  pack
}
probes() {  # run directory with ssa/ and dense/ checkpoints; within the call's $TOTAL
  local r d m t
  r=$(ls -d $1/ssa/checkpoints/step_* 2>/dev/null | tail -1); d=$(ls -d $1/dense/checkpoints/step_* 2>/dev/null | tail -1)
  [ -n "$r" ] || { echo "no ssa checkpoint in $1"; return 1; }
  t=$((TOTAL - SECONDS - 45)); [ $t -lt 60 ] || t=60  # leave ~45 s for the two answer probes
  [ $t -gt 10 ] && timeout $t python3 scripts/needle_rank_probe.py $r --lengths ${RL:-4K 16K} --out $O/ranks.json \
    > $O/ranks.log 2>&1
  echo "ranks rc=$? t=$SECONDS"; grep "^|" $O/ranks.log
  for m in $r $d; do
    t=$(((TOTAL - SECONDS) / 2)); [ $t -lt 25 ] || t=25; [ $t -gt 5 ] || continue
    timeout $t python3 scripts/probe_answers.py $m --tasks niah_multikey_2 niah_single_1 --length ${PL:-4096} \
      --samples 16 2>/dev/null | tee -a $O/probe.jsonl
  done
}
