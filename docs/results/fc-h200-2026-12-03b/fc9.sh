#!/bin/bash
# Issue 6, for the next session (written 2026-12-03): fc8.sh's recipe (stage 1 dense at 1K, RoPE theta 1e8;
# stage 2 SSA with the small budget and attention.ssa.routing=distill on 4K rows, 380 steps), then ONE probe
# process (one model load, one Triton warm-up) over 16K, 64K, 256K and 1M for niah_single_1 and
# niah_multikey_2, 8 samples each, printing each row when done, until the call's time runs out.
# fc8 reached niah_single_1 exact 0.625 (token accuracy 0.94) at 16K; its 64K and 256K probes (separate
# processes, 45 s each) timed out. Results tarred into $OUT every 15 s.
[ -n "$NOPIP" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
O=${OUT:-/tmp}; S1=${S1:-130}; S2=${S2:-200}; END=${END:-570}; mkdir -p runs res
(while sleep 15; do tar czf $O/fc9.tgz res devrun/fc9.sh 2>/dev/null; done) & TAR=$!
timeout -s TERM -k 20 $S1 python3 -m train experiment=functional_context_short attention=dense name=s1 \
  hydra.run.dir=runs/s1 model.hf_config.rope_theta=100000000.0 train.steps=1100 $XS > res/s1.log 2>&1
cp runs/s1/metrics.jsonl res/s1-metrics.jsonl
M=$(ls -d runs/s1/checkpoints/step_*/model | tail -1); echo "stage 1: $M t=$SECONDS"
timeout -s TERM -k 20 $S2 python3 -m train experiment=functional_context attention=ssa name=s2 hydra.run.dir=runs/s2 \
  model=hf model.path=$M model.tokenizer=byte data.synthetic.ratio=1.0 train.steps=${N2:-380} train.ckpt_every=50 \
  train.keep_checkpoints=1 train.seq_len=4096 train.micro_batch=8 "data.synthetic.lengths=[]" \
  "data.synthetic.tasks=[niah_single_1,niah_multikey_2,niah_multikey_1]" \
  attention.ssa.local_window=256 attention.ssa.topk_blocks=16 attention.ssa.routing=distill \
  attention.ssa.distill_blocks=0 logging.router_stats_every=25 logging.router_query_blocks=8 \
  train.optimizer.lr=5e-4 train.schedule.warmup_steps=20 logging.log_every=25 $XO > res/s2.log 2>&1
cp runs/s2/metrics.jsonl res/s2-metrics.jsonl; echo "stage 2 t=$SECONDS"
timeout $((END - SECONDS)) python3 scripts/probe_answers.py runs/s2 --tasks niah_single_1 niah_multikey_2 \
  --length ${PL:-16384 65536 262144 1048576} --samples ${PN:-8} 2>res/probe.err | grep '^{' | tee -a res/probes.jsonl
kill $TAR; tar czf $O/fc9.tgz res devrun/fc9.sh; echo "end t=$SECONDS"
