#!/bin/bash
# Issue 6, the call after fc63.sh on the same warm machine (runs/fc63-ssa must be there; ~560 s): fc63's checkpoint
# read with a wider search and routed budget at evaluation only. fc62's ranks (needle_ranks_first) at 256K: the
# needle's 512-token node ranks 50-226 of 512 at level 1 (median over (layer, head) pairs), so beams of 64 drop it
# in ~0.7 of pairs; where it survives, its block ranks 17-490 among the leaf candidates in the wrong answers' best
# heads, against the trained budget of 16. So at 256K: 256 level-1 nodes kept (beam_widths=[64,256]) and 64 routed
# blocks (4,096 routed tokens instead of 1,024), with mean and with bound leaf scores, both prose tasks, 8 depths;
# then 1M over 3 depths: every level-2 node and 512 level-1 nodes kept, 64 routed blocks, bound leaves.
# --eval-ssa is replaced as a whole by a later occurrence: every key is given.
# CPU smoke after fc63.sh's: NOPIP=1 PYTHONPATH=$PWD EXTRA="--smoke" EL=2048 EL2=2048 OUT=/tmp/o63 bash devrun/fc63b.sh
TAG=fc63b; F=runs/fc63; TOTAL=${TOTAL:-560}; source devrun/fclib.sh
C=$F-ssa/ssa
[ -d $C ] || { echo "no $C: the machine went cold after fc63.sh; run fc63.sh again"; exit 1; }
D8="0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8"
ev() { local name=$1 limit=$2; shift 2
  prove $name $limit --recipe h200-4k-multikey --models ssa --eval-only --checkpoint $C --needle-routing "$@"; }
ev k64 170 --tasks niah_multikey_1 niah_single_2 --depths $D8 --eval-lengths ${EL:-256K} \
  --eval-ssa node_score=bound "beam_widths=[64,256]" topk_blocks=64
ev k64lb 170 --tasks niah_multikey_1 niah_single_2 --depths $D8 --eval-lengths ${EL:-256K} \
  --eval-ssa node_score=bound leaf_score=bound "beam_widths=[64,256]" topk_blocks=64
ev k64w 210 --tasks niah_multikey_1 niah_single_2 --depths 0.2 0.5 0.8 --eval-lengths ${EL2:-1M} \
  --eval-ssa node_score=bound leaf_score=bound "beam_widths=[64,256,512]" topk_blocks=64
echo "end t=$SECONDS"
