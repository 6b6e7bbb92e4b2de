#!/bin/bash
# Issue 6, one call: stage 1 (dense, 1K rows, 32 a step: copy + niah, the lookup forms), stage 2 (SSA from
# stage 1's weights, rows up to 16K: routing), then the needle evaluation at 16K / 256K / 1M.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
S1=${S1:-150}; S2=${S2:-2.5}
timeout -s TERM $S1 python3 -m train experiment=functional_context_copy attention=dense name=s1 hydra.run.dir=runs/s1 \
  train.ckpt_every=0 train.seq_len=1024 train.micro_batch=32 data.synthetic.ratio=1.0 "data.synthetic.lengths=[]" \
  train.steps=1800 train.schedule.warmup_steps=100 logging.log_every=50 \
  "data.synthetic.tasks=[copy,niah_single_1,niah_multikey_2,niah_multikey_1]" > runs_s1.log 2>&1
tail -3 runs_s1.log; cp runs/s1/metrics.jsonl $OUT/s1_metrics.jsonl
M=$(ls -d runs/s1/checkpoints/step_*/model | tail -1); echo "stage 1: $M"
python3 scripts/prove_functional_context.py --experiment functional_context --out runs/fc --models ssa \
  --time-budget-min $S2 --train-steps 1200 --samples 2 --max-new-tokens 12 --eval-lengths 16K 256K 1M \
  --override model=hf model.path=$M model.tokenizer=byte data.synthetic.ratio=1.0 \
  "data.synthetic.tasks=[niah_single_1,niah_multikey_2,niah_multikey_1,niah_multiquery]" \
  "data.synthetic.lengths=[2048,4096,16384,16384]" data.synthetic.extra_queries=4 \
  train.optimizer.lr=5e-4 train.schedule.warmup_steps=20 logging.log_every=25 2>&1 | grep -v "^\[.*INFO" | tail -40
cp runs/fc/functional-context* runs/fc/ssa/metrics.jsonl runs/fc/ssa/train_summary.json $OUT/ 2>/dev/null; ls $OUT
