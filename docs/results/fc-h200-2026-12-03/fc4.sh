#!/bin/bash
# Issue 6, 2026-12-03 call 2 (call 1, fc3.sh, ran past 600 s and returned nothing): stage 1 (dense,
# functional_context_short, rope_theta 1e8), then three SSA stage-2 trainings side by side from its weights,
# probes at 16K (trained budget and every block), and the needle evaluation only where a probe retrieves.
#   a: default budget (sink + 1,024 window + 112 routed blocks), learned router
#   b: default budget, router=attention (the attention's own q/k score the blocks)
#   c: small budget (sink + 256 window + 16 routed blocks = 1,344 keys, about stage 1's 1K), learned router
[ -n "$NOPIP" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
O=${OUT:-/tmp}; S1=${S1:-150}; S2=${S2:-150}; EV=${EV:-"16K 1M"}; END=${END:-555}; mkdir -p runs res
(while sleep 15; do tar czf $O/fc4.tgz res devrun/fc4.sh 2>/dev/null; done) & TAR=$!
timeout -s TERM -k 30 $S1 python3 -m train experiment=functional_context_short attention=dense name=s1 hydra.run.dir=runs/s1 \
  model.hf_config.rope_theta=100000000.0 train.steps=1500 $XS > res/s1.log 2>&1
cp runs/s1/metrics.jsonl res/s1_metrics.jsonl; tail -1 res/s1_metrics.jsonl
M=$(ls -d runs/s1/checkpoints/step_*/model | tail -1); echo "stage 1: $M  t=$SECONDS"
P="python3 scripts/probe_answers.py"
timeout 60 $P runs/s1 --tasks niah_single_1 niah_multikey_2 --length 1024 --samples 16 2>/dev/null | grep '^{' > res/probe_s1.jsonl &
stage2() {  # name, extra overrides
  n=$1; shift
  timeout -s TERM -k 45 $S2 python3 -m train experiment=functional_context attention=ssa name=$n hydra.run.dir=runs/$n \
    model=hf model.path=$M model.tokenizer=byte data.synthetic.ratio=1.0 train.steps=900 train.ckpt_every=0 \
    "data.synthetic.tasks=[niah_single_1,niah_multikey_2,niah_multikey_1,niah_multiquery]" \
    "data.synthetic.lengths=[4096,16384,16384]" data.synthetic.extra_queries=4 \
    train.optimizer.lr=5e-4 train.schedule.warmup_steps=20 logging.log_every=25 $XO "$@" > res/$n.log 2>&1
  cp runs/$n/metrics.jsonl res/$n-metrics.jsonl
  for k in "" "--ssa-topk 256"; do timeout 50 $P runs/$n --tasks niah_single_1 --length ${PL:-16384} --samples ${PN:-16} $k 2>/dev/null | grep '^{'; done > res/probe_$n.jsonl
}
stage2 a & A=$!; stage2 b attention.ssa.router=attention & B=$!
stage2 c attention.ssa.local_window=256 attention.ssa.topk_blocks=16 & C=$!; wait $A $B $C
echo "stage 2 + probes done t=$SECONDS"; cat res/probe_*.jsonl
for n in a b c; do echo "== $n $(grep -c . res/$n-metrics.jsonl) logged"; tail -2 res/$n-metrics.jsonl; grep -i "error\|Traceback" res/$n.log | tail -3; done
for n in a b c; do  # evaluate only a variant whose 16K probe (trained budget) retrieves
  ok=$(head -1 res/probe_$n.jsonl | python3 -c "import json,sys; print(int(json.loads(sys.stdin.read() or '{\"exact\":0}')['exact'] >= 0.25))")
  left=$((END - SECONDS)); echo "$n retrieves at 16K: $ok; $left s left"
  if [ "$ok" = 1 ] && [ $left -gt 60 ]; then
    timeout $left python3 scripts/prove_functional_context.py --out runs/$n --models ssa --eval-only --checkpoint runs/$n \
      --samples 2 --max-new-tokens 12 --eval-lengths $EV --depths 0.25 0.5 0.75 > res/eval_$n.log 2>&1
    cp runs/$n/functional-context.json res/$n-fc.json; tail -8 res/eval_$n.log
  fi
done
kill $TAR; tar czf $O/fc4.tgz res devrun/fc4.sh; echo "end t=$SECONDS"
