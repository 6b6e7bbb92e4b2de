#!/bin/bash
# Issue 6 (after fc65b.sh, on the same warm machine; ~530 s): fc65's ssa model on niah_multikey_1 at 256K (8 depths),
# then at 1M on the recipe's three tasks, 3 depths each (~42 s a sample on one H100); the recipe's beams [64,256,512]
# are the 1M search on rows past 256K.
# CPU smoke after fc65b.sh's: NOPIP=1 PYTHONPATH=$PWD EXTRA="--smoke" L2=2048 L3=2048 OUT=/tmp/o65 bash devrun/fc65c.sh
TAG=fc65c; F=runs/fc65; TOTAL=${TOTAL:-570}; source devrun/fc65lib.sh
trained; wide 120  # the wide search: tested once per machine, else the reference
ev mk 150 --tasks niah_multikey_1 --eval-lengths ${L2:-256K}
ev w 420 --eval-lengths ${L3:-1M} --depths 0.2 0.5 0.8
echo "end t=$SECONDS"
