#!/bin/bash
# Issue 6 (twenty-third session): fc63's checkpoint, fc63b's k64lb search (bound node and leaf scores, beams [64,256],
# 64 routed blocks). niah_single_2 at 256K (timed out in fc63b), niah_multikey_1 at 256K on 8 more depths, and
# niah_single_2 at 1M on 3 depths. Needs the warm machine after fc63.sh.
TAG=fc63d; F=runs/fc63; TOTAL=${TOTAL:-580}; source devrun/fclib.sh
C=$F-ssa/ssa
[ -d $C ] || { echo "no $C: the machine went cold after fc63.sh; run fc63.sh again"; exit 1; }
S="node_score=bound leaf_score=bound"
ev() { local name=$1 limit=$2; shift 2
  prove $name $limit --recipe h200-4k-multikey --models ssa --eval-only --checkpoint $C --needle-routing "$@"; }
ev s2 150 --tasks niah_single_2 --depths 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 --eval-lengths 256K \
  --eval-ssa $S "beam_widths=[64,256]" topk_blocks=64
ev mk 150 --tasks niah_multikey_1 --depths 0.05 0.15 0.25 0.35 0.45 0.55 0.65 0.9 --eval-lengths 256K \
  --eval-ssa $S "beam_widths=[64,256]" topk_blocks=64
ev s2w 250 --tasks niah_single_2 --depths 0.2 0.5 0.8 --eval-lengths 1M \
  --eval-ssa $S "beam_widths=[64,256,512]" topk_blocks=64
echo "end t=$SECONDS"
