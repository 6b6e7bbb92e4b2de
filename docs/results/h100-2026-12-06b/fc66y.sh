#!/bin/bash
# Issue 6, twenty-eighth session: after fc66x.sh on the same warm machine, with the device time left (TOTAL, s): the
# ssa model at 256K on the recipe's other two tasks (8 depths), then the dense model at 1M on them (3 depths).
# CPU smoke after fc66x.sh's: NOPIP=1 PYTHONPATH=$PWD EXTRA="--smoke" L2=2048 L3=4096 OUT=/tmp/o66x bash devrun/fc66y.sh
TAG=fc66y; F=runs/fc66; TOTAL=${TOTAL:-570}; source devrun/fc66lib.sh
need ssa dense
ev s 200 ssa --eval-lengths ${L2:-256K} --tasks niah_multikey_1 niah_single_2
ev d2 400 dense --dense-max-len 4M --eval-lengths ${L3:-1M} --tasks niah_single_2 niah_multikey_1 --depths 0.2 0.5 0.8
echo "end t=$SECONDS"
