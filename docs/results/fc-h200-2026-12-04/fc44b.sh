#!/bin/bash
# Issue 6, call 2 of fc44 (the moment fc44.sh returns; runs/fc44-sd/ssa must be there): the multikey recipe's ssa
# checkpoint read eval-only with the recipe's bound node scores: niah_multikey_2 at 16K / 64K / 256K and niah_single_1
# at 16K / 1M (4 positions each), dense at 16K on both tasks.
# CPU smoke after fc44.sh's: NOPIP=1 PYTHONPATH=$PWD EXTRA="--smoke" LM="1024 2048" LS1=2048 LD=1024 OUT=/tmp/o44 bash devrun/fc44b.sh
TAG=fc44b; F=runs/fc44; source devrun/fclib.sh
[ -d $F-sd/ssa/checkpoints ] || { echo "no $F-sd/ssa/checkpoints: the machine went cold; run fc44.sh again"; exit 1; }
E="--recipe h200-4k-multikey --eval-only --depths 0.2 0.4 0.6 0.8"
prove m 220 $E --models ssa --checkpoint $F-sd/ssa --needle-routing --tasks niah_multikey_2 --eval-lengths ${LM:-16K 64K 256K}
prove s 200 $E --models ssa --checkpoint $F-sd/ssa --needle-routing --tasks niah_single_1 --eval-lengths ${LS1:-16K 1M}
prove d 100 $E --models dense --checkpoint $F-sd/dense --eval-lengths ${LD:-16K}
echo "end t=$SECONDS"
