#!/bin/bash
# Issue 6 (2026-12-03, second session): fc6.sh with the router distilled from the dense attention.
# Two pipelines side by side on one GPU, "rope" (RoPE theta 1e8 everywhere) and "nope"
# (model.nope_layers=[1,3,5,7,9]). Stage 1: dense at 1K (functional_context_short). Probes of stage 1 with
# dense attention at 1K, 4K, 16K (does the lookup itself carry?), run beside stage 2. Stage 2: SSA, small
# budget (sink + 256 window + 16 routed blocks), attention.ssa.routing=distill over every query block, 4K
# rows x 8, one needle sample per row, router recall logged every 25 steps. Probes of stage 2 at 4K and
# 16K with the trained budget and at 4K with every block routed (dense through the SSA path).
[ -n "$NOPIP" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
O=${OUT:-/tmp}; S1=${S1:-165}; S2=${S2:-165}; PT=${PT:-60}; mkdir -p runs res
(while sleep 15; do tar czf $O/fc7.tgz res devrun/fc7.sh 2>/dev/null; done) & TAR=$!
probe() {  # tag, checkpoint dir, length, extra args
  timeout $PT python3 scripts/probe_answers.py $2 --tasks niah_single_1 --length $3 --samples ${PN:-16} "${@:4}" \
    2>res/probe$1-$3.err | grep '^{' | sed "s/^{/{\"tag\": \"$1\", /" | tee -a res/probe_$1.jsonl
}
pipeline() {  # tag, stage-1 overrides
  t=$1; shift
  timeout -s TERM -k 30 $S1 python3 -m train experiment=functional_context_short attention=dense name=s1$t \
    hydra.run.dir=runs/s1$t model.hf_config.rope_theta=100000000.0 train.steps=1100 $XS "$@" > res/s1$t.log 2>&1
  cp runs/s1$t/metrics.jsonl res/s1$t-metrics.jsonl
  M=$(ls -d runs/s1$t/checkpoints/step_*/model | tail -1); echo "$t stage 1: $M t=$SECONDS"
  (for L in ${P1:-1024 4096 16384}; do probe s1$t runs/s1$t $L; done) &
  timeout -s TERM -k 45 $S2 python3 -m train experiment=functional_context attention=ssa name=s2$t hydra.run.dir=runs/s2$t \
    model=hf model.path=$M model.tokenizer=byte data.synthetic.ratio=1.0 train.steps=700 train.ckpt_every=0 \
    train.seq_len=${L2:-4096} train.micro_batch=8 "data.synthetic.lengths=[]" \
    "data.synthetic.tasks=[niah_single_1,niah_multikey_2,niah_multikey_1]" \
    attention.ssa.local_window=256 attention.ssa.topk_blocks=16 attention.ssa.routing=distill \
    attention.ssa.distill_blocks=0 logging.router_stats_every=25 logging.router_query_blocks=8 \
    train.optimizer.lr=5e-4 train.schedule.warmup_steps=20 logging.log_every=25 $XO > res/s2$t.log 2>&1
  cp runs/s2$t/metrics.jsonl res/s2$t-metrics.jsonl; echo "$t stage 2 t=$SECONDS"
  wait
  for L in ${PL:-4096 16384}; do probe s2$t runs/s2$t $L; done
  probe s2${t}all runs/s2$t ${PA:-4096} --ssa-topk 64
  echo "$t done t=$SECONDS"
}
pipeline rope & A=$!; pipeline nope "model.nope_layers=[1,3,5,7,9]" & B=$!; wait $A $B
kill $TAR; tar czf $O/fc7.tgz res devrun/fc7.sh; echo "end t=$SECONDS"
