#!/bin/bash
# Shared setup of the issue-6 device scripts (fc42*.sh on): source it. Installs the carried wheels once per machine,
# exports the environment, and defines
#   prove NAME SECONDS ARGS...  python scripts/prove_functional_context.py --out $F-NAME ARGS, at most SECONDS (and
#                               never past the call's $TOTAL), its log in $O/NAME.log, the result lines echoed
#   pack                        $O/$TAG.tgz of every $F* run's small files (json, md, png, metrics, eval samples)
# Variables: F (run prefix, runs/fc42), O (output dir, $OUT), TAG (tarball name), TOTAL (call budget, s), EXTRA
# (appended to every prove, e.g. --smoke on CPU), NOPIP=1 (CPU smoke: no wheels).
[ -n "$NOPIP" ] || [ -d /tmp/site/hydra ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
F=${F:-runs/fc42}; O=${OUT:-/tmp}; TOTAL=${TOTAL:-570}; mkdir -p $O
pack() {
  tar czf $O/${TAG:-fc}.tgz $F*/*.json $F*/*.md $F*/*.png $F*/*/metrics.jsonl $F*/*/train_summary.json \
    $F*/*/eval/*.json* $F*/*/log.txt 2>/dev/null
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
