#!/bin/bash
# Issue 6 (optional, after fc65c.sh on the same warm machine, if device time is left; ~150-550 s): fc65's ssa model
# at 1M on the recipe's five other depths (0.1 0.3 0.4 0.6 0.7; fc65c read 0.2 0.5 0.8), all three tasks; then, on a
# GPU of more than 100 GB (an H200: the 4M), niah_single_1 and niah_multikey_1 at 4M, depths 0.2 0.5 0.8.
# Both only pay off once the wide Triton search (its GPU test: fc65lib.sh's wide) serves the 1M / 4M prefill: with the
# PyTorch reference a 1M sample took ~40 s on an H100. Join: add $F-w2 and $F-x to fc65's --join list.
# CPU smoke after fc65.sh's: NOPIP=1 PYTHONPATH=$PWD EXTRA="--smoke" L3=2048 OUT=/tmp/o65 bash devrun/fc65e.sh
TAG=fc65e; F=runs/fc65; TOTAL=${TOTAL:-570}; source devrun/fc65lib.sh
trained; wide 120  # the wide search: tested once per machine, else the reference
ev w2 330 --eval-lengths ${L3:-1M} --depths 0.1 0.3 0.4 0.6 0.7
if python3 -c "import torch, sys; sys.exit(not (torch.cuda.is_available() and torch.cuda.get_device_properties(0).total_memory > 100e9))"; then
  ev x 560 --tasks niah_single_1 niah_multikey_1 --eval-lengths 4M --depths 0.2 0.5 0.8
else
  echo "4M: skipped (a GPU of more than 100 GB only)"
fi
echo "end t=$SECONDS"
