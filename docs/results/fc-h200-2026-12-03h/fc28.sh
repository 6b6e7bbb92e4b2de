#!/bin/bash
# Issue 6, for the next device session (written 2026-12-03, eighth session): does any stage-1 recipe learn
# niah_multikey_2's key lookup at 1K? (fc23/fc25: multikey 0 at 4K and 16K; at 4K 7 of 12 predictions are another
# needle's value, copied exactly: the number format and copying are learnt, matching the key is not.)
# Four stage-1 variants side by side on one H200 for MIN minutes each (scripts/sweep_recipes.py), then each probed
# at 1K (teacher-forced answer loss / exact match on 32 EVAL-split samples):
#   a  the h200-4k(-far) stage 1 as it is (functional_context_short: copy, single, multikey_2, multikey_1; theta 1e8)
#   b  a + 8 extra answered lookups, random order, after every multikey answer (9 key lookups per sample)
#   c  b with only each lookup's value labelled (data.synthetic.extra_labels=value: its key, drawn at random, is
#      read but not learnt; under b, of a lookup line's labels that the template does not predict, ~2/3 are that
#      key's ~15 bytes and ~1/3 the value's 8)
#   d  b on the 6 x 256 model at lr 3e-3 (2026-12-02 sweep run d: the best multikey reading so far, 0.19 exact)
#   e  b with a 16K byte-level BPE tokenizer trained first on the device (python -m data.bpe: stdlib code, RULER's
#      word lists, synthetic rows; a key ~3 tokens instead of ~15 bytes; digits one per token). Its 1K-token rows
#      hold ~3.5x the text, so its multikey_2 probe at 1K has ~3.5x the distractor needles of a-d's.
# Copy to devrun/, carry .whl and devrun (~9.5 min held):  bash devrun/fc28.sh
# CPU smoke: NOPIP=1 MIN=0.6 STEPS=3 STEPS_D=3 PS=2 BPE_CHARS=300000 SMOKE="model.hf_config.num_hidden_layers=2
#   model.hf_config.hidden_size=64 model.hf_config.intermediate_size=128 model.hf_config.num_attention_heads=2
#   model.hf_config.num_key_value_heads=1 train.micro_batch=2 train.schedule.warmup_steps=1" bash devrun/fc28.sh
[ -n "$NOPIP" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
O=${OUT:-/tmp}; mkdir -p $O
timeout 120 python3 -m data.bpe --out runs/bpe16k --max-chars ${BPE_CHARS:-20000000} | tail -1; echo "bpe t=$SECONDS"
C="attention=dense model.hf_config.rope_theta=100000000.0 train.seq_len=1024 train.steps=${STEPS:-2000} logging.log_every=50 $SMOKE"
X="data.synthetic.extra_queries=8 data.synthetic.extra_order=random"
SMALL="model.hf_config.num_hidden_layers=6 model.hf_config.hidden_size=256 model.hf_config.intermediate_size=768 model.hf_config.num_attention_heads=4 model.hf_config.num_key_value_heads=2 train.optimizer.lr=3e-3"
timeout ${T:-540} python3 scripts/sweep_recipes.py --experiment functional_context_short --out runs/mk --minutes ${MIN:-6.5} \
  --probe-tasks niah_single_1 niah_multikey_2 --probe-lengths 1024 --probe-samples ${PS:-32} \
  --run a "$C" \
  --run b "$C $X" \
  --run c "$C $X data.synthetic.extra_labels=value" \
  --run d "$C $X $SMALL train.steps=${STEPS_D:-3500}" \
  --run e "$C $X model.tokenizer=$PWD/runs/bpe16k" 2>&1 | grep -v -i warn | tail -20
echo "rc=${PIPESTATUS[0]} t=$SECONDS"
cp runs/mk/sweep.json $O/ 2>/dev/null
for r in a b c d e; do sed "s/^/$r /" runs/mk/$r/metrics.jsonl; done > $O/metrics.txt 2>/dev/null
cp devrun/fc28.sh runs/bpe16k/bpe.json $O/ 2>/dev/null; true
