#!/bin/bash
# Issue 6 (after fc66.sh on the same warm machine, ~560 s): ssa at 1M (the recipe's 8 depths, ~9 s a sample on an
# H100 without --needle-routing: 3.4 s prefill + ~10 decode steps in the PyTorch decoder), then the dense model at
# 256K (4 depths) and at 1M (niah_single_1, 3 depths; ~40 s a sample: 10 layers of causal SDPA over 1M tokens).
# CPU smoke after fc66.sh's: NOPIP=1 PYTHONPATH=$PWD EXTRA="--smoke" L2=2048 L3=4096 OUT=/tmp/o66 bash devrun/fc66b.sh
TAG=fc66b; F=runs/fc66; TOTAL=${TOTAL:-570}; source devrun/fc66lib.sh
need ssa dense
ev w 290 ssa --eval-lengths ${L3:-1M}
ev d 100 dense --dense-max-len 4M --eval-lengths ${L2:-256K} --depths 0.2 0.4 0.6 0.8
ev d1 400 dense --dense-max-len 4M --eval-lengths ${L3:-1M} --tasks niah_single_1 --depths 0.2 0.5 0.8
echo "end t=$SECONDS"
