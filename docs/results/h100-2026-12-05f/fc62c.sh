#!/bin/bash
# Issue 6, optional third call after fc62.sh / fc62b.sh on the same warm machine (runs/fc62-ssa/ssa must be there;
# ~300 s): fc62's checkpoint read with blocks scored by the bound of their best token (leaf_score=bound, selection
# only: it routed the single needle in 0.89 of (layer, head) pairs at 1M against 0.72 with block means, fc44c).
# fc60's one routing miss up to 256K (0.6 depth: needle routed in 0.09 of pairs) is the kind it could fix.
#   lb:  niah_multikey_1 at 256K over fc62's 8 depths, bound nodes and leaves, beams of 64;
#   lbw: niah_multikey_1 at 1M over 3 depths, bound leaves with every level-2 node kept.
# CPU smoke after fc62.sh's: NOPIP=1 PYTHONPATH=$PWD EXTRA="--smoke" EL=2048 EL2=2048 OUT=/tmp/o62 bash devrun/fc62c.sh
TAG=fc62c; F=runs/fc62; TOTAL=${TOTAL:-300}; source devrun/fclib.sh
C=$F-ssa/ssa
[ -d $C ] || { echo "no $C: the machine went cold after fc62.sh; run fc62.sh again"; exit 1; }
E="--recipe h200-4k-multikey --models ssa --eval-only --checkpoint $C --needle-routing --tasks niah_multikey_1"
prove lb 130 $E --depths 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 --eval-ssa node_score=bound leaf_score=bound "beam_widths=[64]" \
  --eval-lengths ${EL:-256K}
prove lbw 160 $E --depths 0.2 0.5 0.8 --eval-ssa node_score=bound leaf_score=bound "beam_widths=[64,256,256]" \
  --eval-lengths ${EL2:-1M}
echo "end t=$SECONDS"
