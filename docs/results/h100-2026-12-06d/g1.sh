#!/bin/bash
# Thirtieth session, call 1 (one H100): the warp-specialised Gluon forward (ssa_kernels/attention/gluon.py).
# 1. its GPU tests (bf16 vs the fp32 reference, poisoned outputs; -x: a hang or failure stops early);
# 2. the forward alone at 1M: the Triton defaults against Gluon variants, two interleaved rounds, outputs compared.
O=${OUT:-/tmp}; mkdir -p $O; export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv | tee $O/gpu.txt
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)" | tee -a $O/gpu.txt
timeout 240 python3 -m pytest -q -x tests/test_ssa_attention_triton.py -k gluon 2>&1 | tail -25 | tee $O/pytest-gluon.log
echo "pytest rc=${PIPESTATUS[0]} t=$SECONDS"
timeout 200 python3 scripts/bench_attention_kernel.py --sizes "" --sweep-T 1048576 --reps 4 --fwd-variants \
  "; fwd:GLUON=1; fwd:GLUON=1,PINGPONG=1; fwd:GLUON=1,num_stages=3; fwd:GLUON=1,PINGPONG=1,num_stages=3" 2>&1 \
  | tee $O/variants.log
echo "variants rc=${PIPESTATUS[0]} t=$SECONDS"
