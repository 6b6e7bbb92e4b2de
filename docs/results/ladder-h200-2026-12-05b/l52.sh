#!/bin/bash
# Seventeenth session: the 1B SSA model at 512K on nested_offload_layer (one H200), against nested_offload at 512K
# measured 2026-11-23 (27.88 s/step, 42.86 GiB GPU, 64.06 GiB host): the tiled layer's cost under ZeRO-3 offload.
# Carry .whl, .whl-ds and devrun. ~300 s.
NOPIP=${NOPIP:-}; TOTAL=${TOTAL:-540}; O=${OUT:-/tmp}; mkdir -p $O
[ -n "$NOPIP" ] || [ -d /tmp/site/hydra ] || python3 -m pip install -q --no-index --no-deps --no-compile \
  --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
[ -n "$NOPIP" ] || [ -d /tmp/site-ds/deepspeed ] || python3 -m pip install -q --no-index --no-deps \
  --no-compile --no-cache-dir --upgrade --target /tmp/site-ds .whl-ds/*.whl || exit 1
export PYTHONPATH=/tmp/site:/tmp/site-ds${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
export PATH=/tmp/site-ds/bin:$PATH TORCH_EXTENSIONS_DIR=/tmp/tex PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
t=$((TOTAL - SECONDS - 5))
timeout $t python3 scripts/bench_ladder.py --out $O --model ${MODEL:-llama_1b} --rungs nested_offload_layer \
  --attention ssa --seq-lens ${L:-512K} --steps 2 --timeout-s $((t - 10)) 2>&1 | tail -6 | tee $O/l52.log
echo "rc=$? t=$SECONDS"
