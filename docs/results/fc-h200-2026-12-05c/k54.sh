#!/bin/bash
# Issue 4, ready on CPU (eighteenth session), not yet run: the Triton bound search gathers a whole node's min / max
# rows once (its two sparse-table runs are one; ssa_kernels/selector/fast.py, Tuning.bound_skip_repeat), so two row
# gathers a node where the fifteenth session's kernel read four. Interpreter-tested bit-identical to the four-gather
# kernel and equal to the reference (tests/test_ssa_selector_fast.py). Measured then (2026-12-05, H200): both bounds
# 110.0 ms at 1M = 32% of the forward, 4M / 1M = 5.16; leaf bound alone 65.9 ms; mean 26.9 ms.
# This call: the selector's CUDA tests, then scripts/bench_selector.py timing the four scorings at 128K / 1M / 4M
# with both kernels in the same run (--bound-four-gathers: rows bound_gathers 2 / 4), reference at 128K, check at
# 32K. ~250 s. Copy to devrun/; carry .whl (pytest). JSON: $OUT/selector-h200-gathers.json.
NOPIP=${NOPIP:-}; O=${OUT:-/tmp}; mkdir -p $O
[ -n "$NOPIP" ] || [ -d /tmp/site/_pytest ] || python3 -m pip install -q --no-index --no-deps --no-compile \
  --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_ssa_selector_fast.py -k "cuda" 2>&1 | tail -4 \
  | tee $O/selector-tests.log
echo "tests t=$SECONDS"
timeout 380 python3 scripts/bench_selector.py --n 131072 1048576 4194304 --ref-max 131072 --check 32768 \
  --scores mean/mean bound/mean mean/bound bound/bound --beam-widths 64 --bound-four-gathers --out $O \
  --tag gathers 2>&1 | tee $O/bench.log
echo "bench_selector rc=$? t=$SECONDS"
