#!/bin/bash
# Issue 6, twenty-seventh session: what is left of fc66b.sh and fc66c.sh in one call after fc66.sh (which now reads
# dense to 256K) on the same warm machine, with the device budget left after failed starts (TOTAL, s): dense at 1M on
# niah_single_1 (3 depths), ssa at 1M (the recipe's 8 depths), then dense at 1M on the other two tasks (3 depths).
# CPU smoke after fc66.sh's: NOPIP=1 PYTHONPATH=$PWD EXTRA="--smoke" L3=4096 OUT=/tmp/o66 bash devrun/fc66d.sh
TAG=fc66d; F=runs/fc66; TOTAL=${TOTAL:-570}; source devrun/fc66lib.sh
need ssa dense
ev d1 220 dense --dense-max-len 4M --eval-lengths ${L3:-1M} --tasks niah_single_1 --depths 0.2 0.5 0.8
ev w 150 ssa --eval-lengths ${L3:-1M}
ev d2 400 dense --dense-max-len 4M --eval-lengths ${L3:-1M} --tasks niah_single_2 niah_multikey_1 --depths 0.2 0.5 0.8
echo "end t=$SECONDS"
