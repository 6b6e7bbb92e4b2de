#!/bin/bash
# Thirtieth session, call 2 (one H100): the Gluon forward as the default.
# 1. GPU tests: the Gluon forward's cases (documents, GQA 8 added) and the bf16 test with the forward both ways;
# 2. the forward alone at 1M with documents (the mask on every block): Triton vs Gluon;
# 3. the official benchmark, run A (16K, 128K, 1M; every baseline) and run B (1M, FA2 measured).
O=${OUT:-/tmp}; mkdir -p $O; export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv | tee $O/gpu.txt
timeout 200 python3 -m pytest -q -x tests/test_ssa_attention_triton.py -k "gluon or bf16" 2>&1 | tail -6 | tee $O/pytest-gluon.log
echo "pytest rc=${PIPESTATUS[0]} t=$SECONDS"
timeout 90 python3 scripts/bench_attention_kernel.py --sizes "" --sweep-T 1048576 --reps 3 --docs 16 --fwd-variants \
  "fwd:GLUON=0; fwd:GLUON=1" 2>&1 | tee $O/variants-docs.log
echo "docs variants rc=${PIPESTATUS[0]} t=$SECONDS"
mkdir -p $O/A $O/B
timeout 200 python3 scripts/bench_attention.py --selector fast --out $O/A --n 16K 128K 1M --decode-n \
  --dense-fwd-max 524288 --dense-fwdbwd-max 131072 2>&1 | tail -45 | tee $O/A/bench.log
echo "run A rc=${PIPESTATUS[0]} t=$SECONDS"
timeout 200 python3 scripts/bench_attention.py --selector fast --out $O/B --n 1M --decode-n --dense-fwd-max 1048576 \
  --dense-fwdbwd-max 131072 --cap-s 40 --reps 2 --methods fa2_sdpa ssa ssa_selector flex 2>&1 | tail -25 | tee $O/B/bench.log
echo "run B rc=${PIPESTATUS[0]} t=$SECONDS"
