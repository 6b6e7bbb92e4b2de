#!/bin/bash
# Issue 6 recipe sweep, call 1: five recipes side by side on one H200, 6 min each, then probes.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
C="attention=dense train.seq_len=1024 train.micro_batch=32 data.synthetic.ratio=1.0 data.synthetic.lengths=[] train.steps=4000 train.schedule.warmup_steps=100 logging.log_every=25"
MIX="data.synthetic.tasks=[copy,niah_single_1,niah_multikey_2]"
SMALL="model.hf_config.num_hidden_layers=6 model.hf_config.hidden_size=256 model.hf_config.intermediate_size=768 model.hf_config.num_attention_heads=4 model.hf_config.num_key_value_heads=2"
python3 scripts/sweep_recipes.py --out runs/sw --minutes 6 --probe-samples 32 \
  --run a "$C $MIX" \
  --run b "$C $MIX train.optimizer.lr=3e-3" \
  --run c "$C data.synthetic.tasks=[copy]" \
  --run d "$C $MIX $SMALL train.optimizer.lr=3e-3" \
  --run e "attention=ssa logging.log_every=25" 2>&1 | tee $OUT/sweep.log
cp runs/sw/sweep.json $OUT/
for r in a b c d e; do sed "s/^/$r /" runs/sw/$r/metrics.jsonl; done > $OUT/metrics.txt
for r in a b c d e; do echo "== $r"; grep -v "^{" runs/sw/$r/train.log | tail -5; done > $OUT/tails.txt
