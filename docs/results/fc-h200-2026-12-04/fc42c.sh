#!/bin/bash
# Issue 6, call 3 of 3, the moment fc42b.sh returns (runs/fc42-ssa/ssa must be there): the rest of fc42's ssa rows,
# eval-only with the recipe's bound node scores: niah_single_1 at 16K / 64K / 256K (4 positions) and 4M (4), and
# niah_multikey_2 at 16K / 64K / 256K / 1M (4 each; fc38: 0 from 16K). Copy to devrun/, carry .whl and devrun.
# CPU smoke after fc42.sh's: NOPIP=1 PYTHONPATH=$PWD EXTRA="--smoke" LS="1024" L4=2048 LM="1024 2048" OUT=/tmp/o bash devrun/fc42c.sh
TAG=fc42c; source devrun/fclib.sh
[ -d $F-ssa/ssa/checkpoints ] || { echo "no $F-ssa/ssa/checkpoints: the machine went cold; run fc42.sh again"; exit 1; }
E="--recipe h200-4k-bound --models ssa --eval-only --checkpoint $F-ssa/ssa --needle-routing"
prove s 200 $E --tasks niah_single_1 --eval-lengths ${LS:-16K 64K 256K} --depths 0.2 0.4 0.6 0.8
prove m 200 $E --tasks niah_multikey_2 --eval-lengths ${LM:-16K 64K 256K 1M} --depths 0.2 0.4 0.6 0.8
prove s4m 200 $E --tasks niah_single_1 --eval-lengths ${L4:-4M} --depths 0.2 0.4 0.6 0.8
echo "end t=$SECONDS"
