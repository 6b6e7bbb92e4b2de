#!/bin/bash
# Issue 6 (after fc66b.sh on the same warm machine, ~560 s): the dense model at 1M on the other two tasks (3 depths),
# the sliding-window model at 1M (4 depths), then on a GPU of more than 100 GB (an H200) ssa at 4M on niah_single_1
# and niah_multikey_1 (3 depths; the KV cache alone is ~43 GB).
# Join (docs/results/<dir>/ from the last tarball): python scripts/prove_functional_context.py --out
#   docs/results/<dir>/joined --join docs/results/<dir>/runs/fc66-{run,w,d,d1,d2,s1m,x} --docs
# CPU smoke after fc66b.sh's: NOPIP=1 PYTHONPATH=$PWD EXTRA="--smoke" L3=4096 L4=8192 OUT=/tmp/o66 bash devrun/fc66c.sh
TAG=fc66c; F=runs/fc66; TOTAL=${TOTAL:-570}; source devrun/fc66lib.sh
need swa dense
ev d2 300 dense --dense-max-len 4M --eval-lengths ${L3:-1M} --tasks niah_single_2 niah_multikey_1 --depths 0.2 0.5 0.8
ev s1m 90 swa --eval-lengths ${L3:-1M} --depths 0.2 0.4 0.6 0.8
if [ -n "$L4" ] || python3 -c "import torch, sys; sys.exit(not (torch.cuda.is_available() and torch.cuda.get_device_properties(0).total_memory > 100e9))"; then
  ev x 560 ssa --tasks niah_single_1 niah_multikey_1 --eval-lengths ${L4:-4M} --depths 0.2 0.5 0.8
else
  echo "4M: skipped (a GPU of more than 100 GB only)"
fi
echo "end t=$SECONDS"
