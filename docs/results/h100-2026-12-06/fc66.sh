#!/bin/bash
# Issue 6, the one item left after the twenty-sixth session: the dense baseline read where it fits (256K and 1M fit an
# H100: no mask is materialised, SDPA runs is_causal; fc65 read it to 64K only, the recipe's --dense-max-len), on one
# training run whose SSA, sliding-window and dense models are all read on the grid. Three calls back to back on one
# warm machine (~1,550 s with the start): fc66.sh, fc66b.sh, fc66c.sh. Copy them with fc66lib.sh to devrun/, with
# fclib.sh (docs/results/fc-h200-2026-12-04/); carry .whl and devrun.
# Here (~470 s): stage 1, then ssa, swa and dense stage 2 side by side (--jobs 3; fc65b ran two side by side at the
# speed of one), each read at 16K / 64K / 256K on the recipe's three tasks and 8 depths (dense to 64K: the recipe's
# --dense-max-len; fc66b reads it beyond).
# Twenty-seventh session: --dense-max-len 4M added (dense read at 256K here too, beside the ssa job's own reads), in
# case this call is the only one the device budget allows; fc66d.sh then reads 1M. Three jobs side by side stopped
# ssa at its time budget (472 of 660 steps) and ran past the call's limit: ssa and dense only now (swa read 0 on every
# sample of fc65 and fc66).
# CPU smoke: NOPIP=1 PYTHONPATH=$PWD EXTRA="--smoke" L1=1024 OUT=/tmp/o66 bash devrun/fc66.sh
TAG=fc66; F=runs/fc66; TOTAL=${TOTAL:-570}; source devrun/fc66lib.sh
prove run 560 --recipe h200-4k-prose --models ssa dense --jobs 2 --dense-max-len 4M --eval-lengths ${L1:-16K 64K 256K}
echo "end t=$SECONDS"
