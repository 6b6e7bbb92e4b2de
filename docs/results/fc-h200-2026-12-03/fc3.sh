#!/bin/bash
# Issue 6, 2026-12-03 call 1: stage 1 (dense, functional_context_short, rope_theta 1e8), then three SSA stage-2
# variants side by side on the one GPU, each from stage 1's weights and evaluated at 16K / 256K / 1M, then probes
# at 16K with the trained budget and with every block (--ssa-topk 256).
#   a: default budget (sink + 1,024 window + 112 routed blocks), learned router
#   b: default budget, router=attention (the attention's own q/k score the blocks)
#   c: small budget (sink + 256 window + 16 routed blocks = 1,344 keys, about stage 1's 1K), learned router
[ -n "$NOPIP" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
S1=${S1:-185}; S2=${S2:-2.5}; EV=${EV:-"16K 256K 1M"}; mkdir -p runs res
timeout -s TERM $S1 python3 -m train experiment=functional_context_short attention=dense name=s1 hydra.run.dir=runs/s1 \
  model.hf_config.rope_theta=100000000.0 train.steps=1800 $XS > res/s1.log 2>&1
tail -2 res/s1.log; cp runs/s1/metrics.jsonl res/s1_metrics.jsonl
M=$(ls -d runs/s1/checkpoints/step_*/model | tail -1); echo "stage 1: $M  t=$SECONDS"
P="python3 scripts/probe_answers.py"
$P runs/s1 --tasks niah_single_1 niah_multikey_2 --length 1024 --samples 16 2>/dev/null | grep '^{' > res/probe_s1.jsonl &
variant() {  # name, extra overrides
  n=$1; shift
  timeout -s KILL 330 python3 scripts/prove_functional_context.py --experiment functional_context --out runs/$n --models ssa \
    --time-budget-min $S2 --train-steps 900 --samples 2 --max-new-tokens 12 --eval-lengths $EV --depths 0.25 0.5 0.75 \
    --override model=hf model.path=$M model.tokenizer=byte data.synthetic.ratio=1.0 \
    "data.synthetic.tasks=[niah_single_1,niah_multikey_2,niah_multikey_1,niah_multiquery]" \
    "data.synthetic.lengths=[4096,16384,16384]" data.synthetic.extra_queries=4 \
    train.optimizer.lr=5e-4 train.schedule.warmup_steps=20 logging.log_every=25 $XO "$@" > res/$n.log 2>&1
  cp runs/$n/functional-context.json res/$n-fc.json; cp runs/$n/ssa/metrics.jsonl res/$n-metrics.jsonl
  cp runs/$n/ssa/train_summary.json res/$n-summary.json
  for k in "" "--ssa-topk 256"; do $P runs/$n/ssa --tasks niah_single_1 --length ${PL:-16384} --samples ${PN:-16} $k 2>/dev/null | grep '^{'; done > res/probe_$n.jsonl
}
variant a &
variant b attention.ssa.router=attention &
variant c attention.ssa.local_window=256 attention.ssa.topk_blocks=16 &
wait; echo "done t=$SECONDS"
cat res/probe_*.jsonl; for n in a b c; do echo "== $n"; tail -3 res/$n-metrics.jsonl; grep -v INFO res/$n.log | tail -4; done
python3 - <<'PY'
import json, glob
for f in sorted(glob.glob("res/*-fc.json")):
    d = json.load(open(f)); print(f, [(r["task"], r["length"], r["depth"], r["accuracy"]) for r in d["results"]])
PY
tar czf ${OUT:-/tmp}/fc3.tgz res devrun/fc3.sh; ls -la ${OUT:-/tmp}
