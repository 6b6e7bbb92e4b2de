#!/bin/bash
# Issue 6 (2026-12-03, second session): one pipeline, RoPE theta 1e8, router distilled. Stage 1 dense at 1K
# (functional_context_short, 1,100 steps). Stage 2 SSA with the small budget (sink + 256 window + 16 routed
# blocks), attention.ssa.routing=distill over every query block, 4K rows x 8, one needle sample per row,
# a fixed step count that ends before the timeout (fc7's stage 2 died at SIGTERM without a checkpoint),
# checkpoints every 50 steps. Probes: 4K and 16K with the trained budget, 4K with no routed block (sink +
# window only: the routing ablation), then 64K and 256K while time is left. Results tarred every 15 s.
[ -n "$NOPIP" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
O=${OUT:-/tmp}; S1=${S1:-140}; S2=${S2:-215}; PT=${PT:-45}; mkdir -p runs res
(while sleep 15; do tar czf $O/fc8.tgz res devrun/fc8.sh 2>/dev/null; done) & TAR=$!
probe() {  # tag, checkpoint dir, length, extra args
  timeout $PT python3 scripts/probe_answers.py $2 --tasks niah_single_1 --length $3 --samples ${PN:-16} "${@:4}" \
    2>res/probe$1-$3.err | grep '^{' | sed "s/^{/{\"tag\": \"$1\", /" | tee -a res/probes.jsonl
}
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
probe s2 runs/s2 ${PA:-4096}
probe s2top0 runs/s2 ${PA:-4096} --ssa-topk 0
probe s2 runs/s2 ${PB:-16384}
for L in ${PL:-65536 262144}; do [ $SECONDS -lt ${TL:-500} ] && probe s2 runs/s2 $L; done
probe s1 runs/s1 ${PA:-4096}
kill $TAR; tar czf $O/fc8.tgz res devrun/fc8.sh; echo "end t=$SECONDS"
