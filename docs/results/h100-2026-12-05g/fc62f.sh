#!/bin/bash
# niah_single_2 at 16K and 64K over fc62's 8 depths (fc62e: 256K), default eval search, fc62's ssa checkpoint on
# the warm machine (the call edited fc62e.sh with sed to this).
TAG=fc62f; F=runs/fc62; TOTAL=${TOTAL:-180}; source devrun/fclib.sh
C=$F-ssa/ssa
[ -d $C ] && prove s2c 170 --recipe h200-4k-multikey --models ssa --eval-only --checkpoint $C --needle-routing \
  --tasks niah_single_2 --depths 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 --eval-lengths 16K 64K
echo "end t=$SECONDS"
