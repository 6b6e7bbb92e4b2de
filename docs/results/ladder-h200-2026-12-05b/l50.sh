#!/bin/bash
# Seventeenth session, first device call. Issue 7: the 1B SSA model at 1M on one GPU with nested_offload_layer
# (DeepSpeed ZeRO-3 offload + bf16 layer inputs on the host + the tiled layer; planner 50.4 GiB GPU). Alongside,
# while DeepSpeed's CPU Adam is JIT-built in the background (CPU only): bench_distill at 4K / 16K (issue 6's
# distillation kernel, per layer) and the selector's CUDA tests (the _visible() refactor of fast.py, interpreter-
# tested only). If the CPU Adam build fails, the ladder falls back to parallel.offload.optimizer=torch.
# Carry .whl, .whl-ds and devrun. Results: $OUT/ladder-<gpu>.json, distill-h200.json, logs.
NOPIP=${NOPIP:-}; TOTAL=${TOTAL:-585}; O=${OUT:-/tmp}; mkdir -p $O
[ -n "$NOPIP" ] || [ -d /tmp/site/hydra ] || python3 -m pip install -q --no-index --no-deps --no-compile \
  --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
[ -n "$NOPIP" ] || [ -d /tmp/site-ds/deepspeed ] || python3 -m pip install -q --no-index --no-deps \
  --no-compile --no-cache-dir --upgrade --target /tmp/site-ds .whl-ds/*.whl || exit 1
export PYTHONPATH=/tmp/site:/tmp/site-ds${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
export PATH=/tmp/site-ds/bin:$PATH TORCH_EXTENSIONS_DIR=/tmp/tex PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
(timeout 240 python3 -c "from deepspeed.ops.op_builder import CPUAdamBuilder; CPUAdamBuilder().load(); print('cpu_adam ok')" \
  > $O/cpu-adam-build.log 2>&1; echo "rc=$?" >> $O/cpu-adam-build.log) &
BUILD=$!
timeout 60 python3 scripts/bench_distill.py --lengths 4096 16384 --out $O/distill-h200.json 2>&1 | tail -12
echo "bench_distill rc=$? t=$SECONDS"
timeout 110 python3 -m pytest -q -p no:cacheprovider tests/test_ssa_selector_fast.py -k "cuda" 2>&1 | tail -4 \
  | tee $O/selector-cuda-tests.log
echo "selector tests t=$SECONDS"
wait $BUILD; tail -3 $O/cpu-adam-build.log; echo "build t=$SECONDS"
EXTRA=""; grep -q "cpu_adam ok" $O/cpu-adam-build.log || EXTRA="--extra parallel.offload.optimizer=torch"
t=$((TOTAL - SECONDS - 5))
timeout $t python3 scripts/bench_ladder.py --out $O --model ${MODEL:-llama_1b} --rungs nested_offload_layer \
  --attention ssa --seq-lens ${L:-1M} --steps 2 --timeout-s $((t - 10)) $EXTRA 2>&1 | tail -6 | tee $O/l50-1m.log
echo "1M rc=$? t=$SECONDS"
