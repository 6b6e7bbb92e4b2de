#!/bin/bash
# Issue 4 on the device: the Triton beam search with bound scores (ssa_kernels/selector/fast.py, _bound_scores; built
# 2026-12-04 on CPU, interpreter-tested only). First its GPU tests (bf16, default config with beams of 64: the
# compiled kernel against the reference, all three node/leaf pairings), then scripts/bench_selector.py timing the
# four scorings at 128K / 1M / 4M (reference to 1M), checks at 32K; JSON to $OUT/selector-h200-bound.json.
# ~150 s. CPU: nothing to smoke (needs CUDA); the bench was smoke-run on CPU through the interpreter with its cuda
# calls stubbed (see the session's notes).
NOPIP=${NOPIP:-}; TOTAL=${TOTAL:-570}; O=${OUT:-/tmp}; mkdir -p $O
[ -n "$NOPIP" ] || [ -d /tmp/site/_pytest ] || python3 -m pip install -q --no-index --no-deps --no-compile \
  --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_ssa_selector_fast.py -k "cuda" 2>&1 | tail -4 \
  | tee $O/selector-bound-tests.log
echo "tests t=$SECONDS"
t=$((TOTAL - SECONDS - 10))
timeout $t python3 scripts/bench_selector.py --n 131072 1048576 4194304 --ref-max 1048576 --check 32768 \
  --scores mean/mean bound/mean mean/bound bound/bound --beam-widths 64 --out $O --tag bound 2>&1 | tee $O/bench.log
echo "bench rc=$? t=$SECONDS"
