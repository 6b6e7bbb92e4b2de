#!/bin/bash
# parallel.tiled_layer on the device (built and CPU-tested 2026-12-05, sixteenth session; parallel/tiled_layer.py).
# 1. The 1B SSA model at 1M on one GPU: nested_offload_layer (DeepSpeed ZeRO-3 offload, bf16 layer inputs on the
#    host, tiled layer). Planner: 50.4 GiB on the GPU (nested_offload without the tiled layer: 93.1). The largest
#    context measured for this model on one GPU so far is 512K.
# 2. The 1B SSA model at 256K: nested_layer (the whole layer's token-wise parts in 16K-token tiles + layer inputs on
#    the host), then nested (tiled MLP + layer inputs on the host) as far as the time allows: step time (the tiles'
#    extra forward) and GPU peak against the planner (nested on an H100: 41.7 GiB, 15.85 s; plan 44.0).
# Carry .whl, .whl-ds and devrun. ~500 s (TOTAL). Results: $OUT/ladder-<gpu>.json and the logs. MODEL / L1 / L2 / NOPIP=1 for a CPU smoke run.
NOPIP=${NOPIP:-}; TOTAL=${TOTAL:-580}; O=${OUT:-/tmp}; mkdir -p $O
MODEL=${MODEL:-llama_1b}; L1=${L1:-256K}; L2=${L2:-1M}
[ -n "$NOPIP" ] || [ -d /tmp/site/hydra ] || python3 -m pip install -q --no-index --no-deps --no-compile \
  --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
# DeepSpeed (the offload rungs) is not in the device image: its wheels travel in .whl-ds/ (carry it), installed apart
# from .whl/ so that the issue-6 scripts' environment stays as it was.
[ -n "$NOPIP" ] || [ ! -d .whl-ds ] || [ -d /tmp/site-ds/deepspeed ] || python3 -m pip install -q --no-index --no-deps \
  --no-compile --no-cache-dir --upgrade --target /tmp/site-ds .whl-ds/*.whl || exit 1
export PYTHONPATH=/tmp/site:/tmp/site-ds${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
export PATH=/tmp/site-ds/bin:$PATH  # ninja, for DeepSpeed's JIT-built CPU Adam
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
t=$((TOTAL - 200)); [ $t -lt 330 ] || t=330
timeout $t python3 scripts/bench_ladder.py --out $O --model $MODEL --rungs nested_offload_layer --attention ssa \
  --seq-lens $L2 --steps 2 --timeout-s $((t - 10)) 2>&1 | tail -4 | tee $O/l48-1m.log
echo "1M rc=$? t=$SECONDS"
t=$((TOTAL - SECONDS - 5))
timeout $t python3 scripts/bench_ladder.py --out $O --model $MODEL --rungs nested_layer nested --attention ssa \
  --seq-lens $L1 --steps 2 --timeout-s $(((t - 10) / 2)) 2>&1 | tail -5 | tee $O/l48-256k.log
echo "256K rc=$? t=$SECONDS"
