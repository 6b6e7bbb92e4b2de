#!/bin/bash
# Issue 6 (a third call on the same warm machine, if the budget allows; ~400 s): fc64's checkpoint with 112 routed
# blocks on niah_multikey_1 at 256K over fc64b's 8 other depths, then at 1M over 3 depths with 512 level-1 nodes.
# CPU smoke: NOPIP=1 PYTHONPATH=$PWD EXTRA="--smoke" EL=2048 EL2=2048 OUT=/tmp/o64 bash devrun/fc64c.sh
TAG=fc64c; F=runs/fc64; TOTAL=${TOTAL:-570}; source devrun/fclib.sh
C=$F-ssa/ssa
[ -d $C ] || { echo "no $C: the machine went cold after fc64.sh; run fc64.sh again"; exit 1; }
ev() { local name=$1 limit=$2; shift 2
  prove $name $limit --recipe h200-4k-prose --models ssa --eval-only --checkpoint $C --needle-routing "$@"; }
ev k112b 190 --tasks niah_multikey_1 --depths 0.05 0.15 0.25 0.35 0.45 0.55 0.65 0.9 --eval-lengths ${EL:-256K} \
  --eval-ssa node_score=bound leaf_score=bound "beam_widths=[64,256]" topk_blocks=112
ev k112w 200 --tasks niah_multikey_1 --depths 0.2 0.5 0.8 --eval-lengths ${EL2:-1M} \
  --eval-ssa node_score=bound leaf_score=bound "beam_widths=[64,256,512]" topk_blocks=112
echo "end t=$SECONDS"
