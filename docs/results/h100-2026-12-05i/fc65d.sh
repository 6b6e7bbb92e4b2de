#!/bin/bash
# Issue 6 (optional, after fc65.sh on the same warm machine, ~120 s): where a 1M sample's ~40 s go. One sample of
# niah_single_2 at 1M read by fc65's ssa model under cProfile with CUDA_LAUNCH_BLOCKING=1 (each kernel waits, so a
# call site's time is its device time); $OUT/prof.txt: the functions by cumulative and by own time. The sample rows
# of every eval since this session also carry prefill_s / decode_s.
# CPU smoke after fc65.sh's: NOPIP=1 PYTHONPATH=$PWD EXTRA="--smoke" L=2048 OUT=/tmp/o65 bash devrun/fc65d.sh
TAG=fc65d; F=runs/fc65; TOTAL=${TOTAL:-300}; source devrun/fc65lib.sh
trained; wide 120  # the wide search: tested once per machine, else the reference
CUDA_LAUNCH_BLOCKING=1 timeout $((TOTAL - SECONDS - 20)) python3 -m cProfile -o $O/prof.out \
  scripts/prove_functional_context.py --out $F-prof --recipe h200-4k-prose --models ssa --eval-only --checkpoint $C \
  --needle-routing --tasks niah_single_2 --eval-lengths ${L:-1M} --depths 0.5 $EXTRA > $O/prof.log 2>&1
echo "prof rc=$? t=$SECONDS"
python3 -c "
import pstats, sys
with open('$O/prof.txt', 'w') as f:
    pstats.Stats('$O/prof.out', stream=f).sort_stats('cumulative').print_stats('ssa_kernels|train/eval|generation', 45)
    pstats.Stats('$O/prof.out', stream=f).sort_stats('tottime').print_stats(30)
"
rm -f $O/prof.out; grep -h '"seconds"' $F-prof/ssa/eval/samples.jsonl | head -2 | cut -c1-400
grep -E '^ +[0-9/]+ +[0-9.]+' $O/prof.txt | head -40 | cut -c1-160
pack
