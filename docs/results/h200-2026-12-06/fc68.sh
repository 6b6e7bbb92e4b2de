#!/bin/bash
# Issue 6, twenty-ninth session: 4M on the issue's recipe (h200-4k-prose). fc67b.sh read fc67's model at 4M on an
# H100 80GB and ran out of GPU memory in the prefill (74 GiB allocated: 10 layers of KV cache and far keys, then the
# near/far merge's fp32 temporaries); the issue names an H200 for 4M, so this runs there, in one call since the
# checkpoint cannot be carried: stage 1, ssa stage 2 alone (660 steps), the 4M read of both target tasks (3 depths),
# then, with what is left, the same model at 256K / 1M on the two targets (8 depths). GPU memory polled each second.
# Copy to devrun/ with fc66lib.sh (docs/results/h100-2026-12-05j/) and fclib.sh (docs/results/fc-h200-2026-12-04/).
# CPU smoke: NOPIP=1 PYTHONPATH=$PWD EXTRA="--smoke" L4=8192 L="2048 4096" OUT=/tmp/o68 bash devrun/fc68.sh
TAG=fc68; F=runs/fc68; TOTAL=${TOTAL:-585}; source devrun/fc66lib.sh
(while sleep 1; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits >> $O/mem.txt 2>/dev/null; done) & POLL=$!
prove run 580 --recipe h200-4k-prose --models ssa --eval-lengths ${L4:-4M} --tasks niah_single_1 niah_multikey_1 \
  --depths 0.2 0.5 0.8
grep -h '"steps"' $F-run/*/train_summary.json
ev g 580 ssa --eval-lengths ${L:-256K 1M} --tasks niah_multikey_1 niah_single_1 --depths 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8
kill $POLL 2>/dev/null; echo "peak MiB: $(sort -n $O/mem.txt 2>/dev/null | tail -1)"
echo "end t=$SECONDS"
