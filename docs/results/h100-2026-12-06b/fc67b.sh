#!/bin/bash
# Issue 6, after fc67.sh on the same warm machine: fc67's ssa model at 4M on the recipe's two target tasks, 3 depths
# each (fc42's other recipe read 4M at 29-30 s a sample on an H200 with beams of 64; this recipe's [64,256,512] beams
# and bound leaves took ~18 s a sample at 1M in fc66x, 5 s prefill + 12 s decode, the decode since cut by the search's
# gathers in one chunk: expect ~20 s of prefill at 4M plus a few of decode; each sample is written as it is read).
# CPU smoke after fc67.sh's: NOPIP=1 PYTHONPATH=$PWD EXTRA="--smoke" L4=8192 OUT=/tmp/o67 bash devrun/fc67b.sh
TAG=fc67b; F=runs/fc67; TOTAL=${TOTAL:-575}; source devrun/fc66lib.sh
need ssa
# the decode search's time and launches per step (the old rule beside the new; seconds), then the 4M read
python3 scripts/bench_decode_search.py --n 262144 1048576 --out $O/decode-search.json 2>&1 | grep '^|'
ev f 570 ssa --eval-lengths ${L4:-4M} --tasks niah_single_1 niah_multikey_1 --depths 0.2 0.5 0.8
echo "end t=$SECONDS"
