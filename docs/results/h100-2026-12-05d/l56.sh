#!/bin/bash
# Nineteenth session, one H100: parallel.memory_check's first GPU runs (error mode, as users get it): the 1B SSA model
# on single at 1M (planner ~284 GiB on an 80 GiB card: must be refused before building) and at 192K (planner 71.8 GiB:
# must pass the check and step; measured peak beside the estimate). Carry .whl, .whl-ds, devrun. ~250 s.
TOTAL=${TOTAL:-280}; source devrun/ladlib.sh
for L in 1M 192K; do
  t=$((TOTAL - SECONDS - 5))
  timeout $t python3 scripts/bench_ladder.py --out $O --model llama_1b --rungs single --attention ssa --seq-lens $L \
    --steps 2 --timeout-s $((t - 10)) --extra parallel.memory_check=error 2>&1 | tail -8 | tee -a $O/l56.log
  echo "L=$L rc=$? t=$SECONDS"
done
