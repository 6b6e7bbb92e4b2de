#!/bin/bash
# Nineteenth session, one H100 (~80 s; no wheels): the bound search with whole nodes apart from the row's partial ones
# (Tuning.bound_edges_apart: one min and one max row per whole node, a select and a multiply) against the eighteenth
# session's kernel (measured this morning on this card: both bounds 84.6 ms at 1M = 25% of the 334 ms forward). The
# --check at 32K compares each scoring's as-built GPU selection (bf16) with the reference.
O=${OUT:-/tmp}; mkdir -p $O; export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
timeout ${T:-200} python3 scripts/bench_selector.py --n 1048576 4194304 --ref-max 0 --check 32768 \
  --scores mean/mean mean/bound bound/bound --beam-widths 64 --bound-variants 2 --out $O --tag apart 2>&1 \
  | tee $O/k56.log
echo "rc=$? t=$SECONDS"
