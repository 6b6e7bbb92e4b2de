#!/bin/bash
# Issue 6, for the twenty-ninth session (an H200 wanted; an H100 also runs it): what is left is 4M on the issue's
# recipe, and a check that the one-command run (--jobs, now training every model before evaluating any) gives the SSA
# model its 660 steps: fc66x's ssa, evaluated beside the dense model's 1M reads, got 363 and read 0.62 at 256K.
# Two calls back to back on one warm machine: this (~500 s: stage 1; ssa and dense stage 2 side by side; ssa read at
# 16K / 256K / 1M on niah_single_1 and niah_multikey_1, 4 depths; dense at 16K only), then fc67b.sh (4M).
# Copy to devrun/ with fc66lib.sh (docs/results/h100-2026-12-05j/) and fclib.sh (docs/results/fc-h200-2026-12-04/).
# CPU smoke: NOPIP=1 PYTHONPATH=$PWD EXTRA="--smoke" L="1024 2048 4096" OUT=/tmp/o67 bash devrun/fc67.sh
TAG=fc67; F=runs/fc67; TOTAL=${TOTAL:-575}; source devrun/fc66lib.sh
prove run 570 --recipe h200-4k-prose --models ssa dense --jobs 2 --dense-max-len ${DL:-16K} \
  --eval-lengths ${L:-16K 256K 1M} --tasks niah_single_1 niah_multikey_1 --depths 0.2 0.4 0.6 0.8
grep -h '"steps"' $F-run/*/train_summary.json
echo "end t=$SECONDS"
