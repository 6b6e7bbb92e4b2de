#!/bin/bash
# Seventeenth session: the 1B SSA model at 512K on single_layer (one H200): the tiled layer alone, no offload and no
# nested pieces, activation checkpointing on (planner 105.4 GiB): the first row of the tiled layer on the cheapest rung.
# Copy ladlib.sh and l53.sh to devrun/; carry .whl, .whl-ds and devrun. ~200 s.
TOTAL=${TOTAL:-270}; source devrun/ladlib.sh
t=$((TOTAL - SECONDS - 5))
timeout $t python3 scripts/bench_ladder.py --out $O --model ${MODEL:-llama_1b} --rungs ${RUNG:-single_layer} \
  --attention ssa --seq-lens ${L:-512K} --steps 2 --timeout-s $((t - 10)) 2>&1 | tail -6 | tee $O/l53.log
echo "rc=$? t=$SECONDS"
