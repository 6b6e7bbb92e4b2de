#!/bin/bash
# Issue 6, thirteenth session (2026-12-04), call 4: issued inline right after fc42c.sh returned, on the warm machine
# (runs/fc42-ssa/ssa still there), with the call's leftover time: more needle positions on fc42's checkpoint,
# niah_single_1 at 16K / 64K (15 positions each; fc42c read 3 of 4 at 64K) and at 1M (8 more). The command as run
# (one line in the device call, here split):
TAG=fc42d; source devrun/fclib.sh
E="--recipe h200-4k-bound --models ssa --eval-only --checkpoint $F-ssa/ssa --needle-routing"; TOTAL=540
prove s64 200 $E --tasks niah_single_1 --eval-lengths 16K 64K \
  --depths 0.05 0.1 0.15 0.25 0.3 0.35 0.45 0.5 0.55 0.65 0.7 0.75 0.85 0.9 0.95 > $OUT/log.txt 2>&1
prove s1m 330 $E --tasks niah_single_1 --eval-lengths 1M --depths 0.05 0.15 0.3 0.45 0.55 0.7 0.85 0.95 >> $OUT/log.txt 2>&1
grep -v "Loading weights\|UNEXPECTED\|^Key " $OUT/log.txt | tail -c 5000
