#!/bin/bash
# Issue 6, 2026-12-03 call 3: stage 1 as fc4.sh (dense, functional_context_short, rope_theta 1e8, shorter), then
# stage 2 under SSA with the small budget (sink + 256 window + 16 routed blocks = 1,344 keys) on 4K rows, 8 a step,
# every row one needle sample: ~94% of the needles lie beyond the window, so routing and the lookup must reach them.
# Then the probe at 4K and 16K (trained budget). Results tarred into $OUT every 15 s.
[ -n "$NOPIP" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
O=${OUT:-/tmp}; S1=${S1:-125}; S2=${S2:-125}; mkdir -p runs res
(while sleep 15; do tar czf $O/fc5.tgz res devrun/fc5.sh 2>/dev/null; done) & TAR=$!
timeout -s TERM -k 30 $S1 python3 -m train experiment=functional_context_short attention=dense name=s1 hydra.run.dir=runs/s1 \
  model.hf_config.rope_theta=100000000.0 train.steps=1300 $XS > res/s1.log 2>&1
cp runs/s1/metrics.jsonl res/s1_metrics.jsonl; tail -1 res/s1_metrics.jsonl
M=$(ls -d runs/s1/checkpoints/step_*/model | tail -1); echo "stage 1: $M  t=$SECONDS"
timeout -s TERM -k 45 $S2 python3 -m train experiment=functional_context attention=ssa name=d hydra.run.dir=runs/d \
  model=hf model.path=$M model.tokenizer=byte data.synthetic.ratio=1.0 train.steps=600 train.ckpt_every=0 \
  train.seq_len=4096 train.micro_batch=8 "data.synthetic.lengths=[]" \
  "data.synthetic.tasks=[niah_single_1,niah_multikey_2,niah_multikey_1]" \
  attention.ssa.local_window=256 attention.ssa.topk_blocks=16 \
  train.optimizer.lr=5e-4 train.schedule.warmup_steps=20 logging.log_every=25 $XO > res/d.log 2>&1
cp runs/d/metrics.jsonl res/d-metrics.jsonl; echo "stage 2 t=$SECONDS"; tail -1 res/d-metrics.jsonl
for L in ${PL:-4096 16384}; do
  timeout 100 python3 scripts/probe_answers.py runs/d --tasks niah_single_1 --length $L --samples ${PN:-16} 2>res/probe_$L.err | grep '^{' | tee -a res/probe_d.jsonl
  echo "probe $L t=$SECONDS"
done
kill $TAR; tar czf $O/fc5.tgz res devrun/fc5.sh; echo "end t=$SECONDS"
