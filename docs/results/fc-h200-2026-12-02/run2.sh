#!/bin/bash
# Issue 6, one call: as proof.sh with rope_theta 1e8 (near-static low rotary dims: content matching at any
# distance), plus probes that separate routing from distance (16K with the trained budget vs every block).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
timeout -s TERM 90 python3 -m train experiment=functional_context_copy attention=dense name=s1 hydra.run.dir=runs/s1 \
  model.hf_config.rope_theta=100000000.0 \
  train.ckpt_every=0 train.seq_len=1024 train.micro_batch=32 data.synthetic.ratio=1.0 "data.synthetic.lengths=[]" \
  train.steps=900 train.schedule.warmup_steps=100 logging.log_every=50 \
  "data.synthetic.tasks=[copy,niah_single_1,niah_multikey_2,niah_multikey_1]" > runs_s1.log 2>&1
tail -2 runs_s1.log; cp runs/s1/metrics.jsonl $OUT/s1_metrics.jsonl
M=$(ls -d runs/s1/checkpoints/step_*/model | tail -1); echo "stage 1: $M"
P="python3 scripts/probe_answers.py"
$P runs/s1 --tasks niah_single_1 niah_multikey_2 --length 1024 --samples 16 2>/dev/null | grep '^{' | tee $OUT/probe.jsonl
$P runs/s1 --tasks niah_single_1 --length 4096 --samples 16 2>/dev/null | grep '^{' | tee -a $OUT/probe.jsonl
python3 scripts/prove_functional_context.py --experiment functional_context --out runs/fc --models ssa \
  --time-budget-min 1.75 --train-steps 1000 --samples 2 --max-new-tokens 12 --eval-lengths 16K 1M \
  --override model=hf model.path=$M model.tokenizer=byte data.synthetic.ratio=1.0 \
  "data.synthetic.tasks=[niah_single_1,niah_multikey_2,niah_multikey_1,niah_multiquery]" \
  "data.synthetic.lengths=[2048,4096,16384,16384]" data.synthetic.extra_queries=4 \
  train.optimizer.lr=5e-4 train.schedule.warmup_steps=20 logging.log_every=25 2>&1 | grep -v "INFO\|^\[" | tail -14
for k in "" "--ssa-topk 256"; do $P runs/fc/ssa --tasks niah_single_1 --length 16384 --samples 16 $k 2>/dev/null | grep '^{' | tee -a $OUT/probe.jsonl; done
cp runs/fc/functional-context* runs/fc/ssa/metrics.jsonl runs/fc/ssa/train_summary.json $OUT/ 2>/dev/null; ls $OUT
