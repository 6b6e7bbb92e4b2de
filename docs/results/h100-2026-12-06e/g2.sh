#!/bin/bash
# Thirty-first session, call 2 (one H100): the GPU tests of the Gluon kernels (blocks 64 and 128) and the bf16 test;
# a CUDA profile of SSA fwd+bwd at 1M, block 128 (where the benchmark's time beyond the kernel passes goes).
O=${OUT:-/tmp}; mkdir -p $O; export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
timeout 330 python3 -m pytest -q tests/test_ssa_attention_triton.py -k "gluon or bf16" 2>&1 | tail -15 | tee $O/pytest-gluon.log
echo "pytest rc=${PIPESTATUS[0]} t=$SECONDS"
timeout 120 python3 devrun/prof.py 128 2>&1 | tee $O/prof-b128.log
echo "prof rc=${PIPESTATUS[0]} t=$SECONDS"
