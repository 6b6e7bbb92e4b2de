#!/bin/bash
# Seventeenth session: the 1B SSA model at 512K on single_layer (one H200): the tiled layer alone, no offload and no
# nested pieces, activation checkpointing on (planner 105.4 GiB): the first row of the tiled layer on the cheapest rung.
# Carry .whl, .whl-ds and devrun. ~200 s.
NOPIP=${NOPIP:-}; TOTAL=${TOTAL:-270}; O=${OUT:-/tmp}; mkdir -p $O
[ -n "$NOPIP" ] || [ -d /tmp/site/hydra ] || python3 -m pip install -q --no-index --no-deps --no-compile \
  --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
[ -n "$NOPIP" ] || [ -d /tmp/site-ds/deepspeed ] || python3 -m pip install -q --no-index --no-deps \
  --no-compile --no-cache-dir --upgrade --target /tmp/site-ds .whl-ds/*.whl || exit 1
export PYTHONPATH=/tmp/site:/tmp/site-ds${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
export PATH=/tmp/site-ds/bin:$PATH TORCH_EXTENSIONS_DIR=/tmp/tex PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
t=$((TOTAL - SECONDS - 5))
timeout $t python3 scripts/bench_ladder.py --out $O --model ${MODEL:-llama_1b} --rungs ${RUNG:-single_layer} \
  --attention ssa --seq-lens ${L:-512K} --steps 2 --timeout-s $((t - 10)) 2>&1 | tail -6 | tee $O/l53.log
echo "rc=$? t=$SECONDS"
