#!/bin/bash
# Issue 6, for the next session (written 2026-12-03, not yet run on the GPU): fc5.sh's two stages twice, side
# by side on one GPU: "rope" (every layer RoPE, theta 1e8) and "nope" (model.nope_layers=[1,3,5,7,9], the
# other layers RoPE 1e8). Stage 1: dense, functional_context_short. Stage 2: SSA with the small budget
# (sink + 256 window + 16 routed blocks = 1,344 keys) on 4K rows, 8 a step, every row one needle sample, so
# ~94% of the needles lie beyond the window. Then probes at 4K and 16K. Results tarred into $OUT every 15 s.
[ -n "$NOPIP" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
O=${OUT:-/tmp}; S1=${S1:-165}; S2=${S2:-165}; mkdir -p runs res
(while sleep 15; do tar czf $O/fc6.tgz res devrun/fc6.sh 2>/dev/null; done) & TAR=$!
pipeline() {  # tag, stage-1 overrides
  t=$1; shift
  timeout -s TERM -k 30 $S1 python3 -m train experiment=functional_context_short attention=dense name=s1$t \
    hydra.run.dir=runs/s1$t model.hf_config.rope_theta=100000000.0 train.steps=1100 $XS "$@" > res/s1$t.log 2>&1
  cp runs/s1$t/metrics.jsonl res/s1$t-metrics.jsonl
  M=$(ls -d runs/s1$t/checkpoints/step_*/model | tail -1); echo "$t stage 1: $M t=$SECONDS"
  timeout -s TERM -k 45 $S2 python3 -m train experiment=functional_context attention=ssa name=s2$t hydra.run.dir=runs/s2$t \
    model=hf model.path=$M model.tokenizer=byte data.synthetic.ratio=1.0 train.steps=700 train.ckpt_every=0 \
    train.seq_len=4096 train.micro_batch=8 "data.synthetic.lengths=[]" \
    "data.synthetic.tasks=[niah_single_1,niah_multikey_2,niah_multikey_1]" \
    attention.ssa.local_window=256 attention.ssa.topk_blocks=16 \
    train.optimizer.lr=5e-4 train.schedule.warmup_steps=20 logging.log_every=25 $XO > res/s2$t.log 2>&1
  cp runs/s2$t/metrics.jsonl res/s2$t-metrics.jsonl; echo "$t stage 2 t=$SECONDS"
  for L in ${PL:-4096 16384}; do
    timeout 90 python3 scripts/probe_answers.py runs/s2$t --tasks niah_single_1 --length $L --samples ${PN:-16} \
      2>res/probe$t-$L.err | grep '^{' | tee -a res/probe_$t.jsonl
  done
  echo "$t done t=$SECONDS"
}
pipeline rope & A=$!; pipeline nope "model.nope_layers=[1,3,5,7,9]" & B=$!; wait $A $B
kill $TAR; tar czf $O/fc6.tgz res devrun/fc6.sh; echo "end t=$SECONDS"
