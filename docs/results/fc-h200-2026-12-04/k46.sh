#!/bin/bash
# Kernels on the device, built on CPU (interpreter-tested only): the Triton beam search with bound scores
# (ssa_kernels/selector/fast.py, _bound_scores, fifteenth session) and the router's distillation target
# (ssa_kernels/distill/triton.py, fourteenth; rows mean / max). First their GPU tests (bf16: the compiled kernels
# against the references; the selector at the default config with beams of 64, all three node/leaf pairings), then
# scripts/bench_selector.py timing the four scorings at 128K / 1M / 4M (reference to 1M), checks at 32K (JSON:
# $OUT/selector-h200-bound.json), then scripts/bench_distill.py at 4K / 16K ($OUT/distill-h200.json). ~270 s.
# Run it FIRST: every evaluation of the issue-6 recipe (node_score=bound) now runs the bound search.
# CPU: nothing to smoke (needs CUDA); bench_selector was smoke-run on CPU through the interpreter, cuda calls stubbed.
NOPIP=${NOPIP:-}; TOTAL=${TOTAL:-570}; O=${OUT:-/tmp}; mkdir -p $O
[ -n "$NOPIP" ] || [ -d /tmp/site/_pytest ] || python3 -m pip install -q --no-index --no-deps --no-compile \
  --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_ssa_selector_fast.py -k "cuda" 2>&1 | tail -4 \
  | tee $O/selector-bound-tests.log
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_ssa_distill.py -k "kernel or triton" 2>&1 | tail -3 \
  | tee $O/distill-tests.log
echo "tests t=$SECONDS"
t=$((TOTAL - SECONDS - 110)); [ $t -lt 250 ] || t=250
timeout $t python3 scripts/bench_selector.py --n 131072 1048576 4194304 --ref-max 1048576 --check 32768 \
  --scores mean/mean bound/mean mean/bound bound/bound --beam-widths 64 --out $O --tag bound 2>&1 | tee $O/bench.log
echo "bench_selector rc=$? t=$SECONDS"
t=$((TOTAL - SECONDS - 5)); [ $t -lt 100 ] || t=100
[ $t -gt 20 ] && timeout $t python3 scripts/bench_distill.py --lengths 4096 16384 --out $O/distill-h200.json
echo "bench_distill rc=$? t=$SECONDS"
