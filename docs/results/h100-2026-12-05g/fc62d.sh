#!/bin/bash
# fc62's 'w' call timed out before niah_single_2 at 1M: run it alone on fc62's ssa checkpoint (warm machine).
TAG=fc62d; F=runs/fc62; TOTAL=${TOTAL:-330}; source devrun/fclib.sh
C=$F-ssa/ssa
[ -d $C ] && prove s2 300 --recipe h200-4k-multikey --models ssa --eval-only --checkpoint $C --needle-routing \
  --tasks niah_single_2 --depths 0.2 0.5 0.8 --eval-ssa node_score=bound "beam_widths=[64,256,256]" \
  --eval-lengths ${EL2:-1M}
echo "end t=$SECONDS"
