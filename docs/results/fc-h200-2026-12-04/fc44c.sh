#!/bin/bash
# Issue 6, call 3 of fc44 (after fc44b.sh, machine still warm: runs/fc44-sd/ssa must be there): the same checkpoint
# with blocks scored by the bound of their best token too (attention.ssa.leaf_score=bound, thirteenth session; CPU toy
# with 2-token needles: docs/ssa.md), paired with fc44b's rows (leaf mean): niah_multikey_2 at 4K / 16K and
# niah_single_1 at 64K / 1M, 4 positions each (fc44.sh's rank probe: its "bound" column is this leaf score at 4K / 16K).
# CPU smoke after fc44.sh's: NOPIP=1 PYTHONPATH=$PWD EXTRA="--smoke" LM="1024" LS1="1024 2048" RL=1024 OUT=/tmp/o44 bash devrun/fc44c.sh
TAG=fc44c; F=runs/fc44; source devrun/fclib.sh
[ -d $F-sd/ssa/checkpoints ] || { echo "no $F-sd/ssa/checkpoints: the machine went cold; run fc44.sh again"; exit 1; }
E="--recipe h200-4k-multikey --eval-only --depths 0.2 0.4 0.6 0.8 --models ssa --checkpoint $F-sd/ssa --needle-routing"
L="--eval-ssa node_score=bound leaf_score=bound beam_widths=[64]"
prove lm 200 $E $L --tasks niah_multikey_2 --eval-lengths ${LM:-4K 16K}
prove ls 250 $E $L --tasks niah_single_1 --eval-lengths ${LS1:-64K 1M}
echo "end t=$SECONDS"
