#!/bin/bash
# Issue 6, the one item left: the dense baseline read where it fits (256K and 1M fit an H100: no mask is
# materialised, SDPA runs is_causal), on one training run whose SSA and dense models are both read on the grid.
# Two calls back to back on one warm machine: this (~450 s), then fc66d.sh (1M). Copy both to devrun/ with
# fc66lib.sh (docs/results/h100-2026-12-05j/) and fclib.sh (docs/results/fc-h200-2026-12-04/); carry .whl and devrun.
# Here: stage 1, then ssa and dense stage 2 side by side (--jobs 2: two ran at the speed of one in fc65b; three, with
# swa, stopped ssa at its time budget after 472 of 660 steps in fc66 and ran past the call's limit; swa read 0 on every
# sample of fc65 and fc66), each read at 16K / 64K / 256K on the recipe's three tasks and 8 depths.
# CPU smoke: NOPIP=1 PYTHONPATH=$PWD EXTRA="--smoke" L1=1024 OUT=/tmp/o66 bash devrun/fc66.sh
TAG=fc66; F=runs/fc66; TOTAL=${TOTAL:-570}; source devrun/fc66lib.sh
prove run 560 --recipe h200-4k-prose --models ssa dense --jobs 2 --dense-max-len 4M --eval-lengths ${L1:-16K 64K 256K}
echo "end t=$SECONDS"
