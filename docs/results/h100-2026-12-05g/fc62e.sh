#!/bin/bash
# niah_single_2 (essay haystack, no distractors) at 256K over fc62's 8 depths, default eval search, the distractors'
# effect at 256K against fc62's niah_multikey_1 0.38 (warm machine, fc62's ssa checkpoint).
TAG=fc62e; F=runs/fc62; TOTAL=${TOTAL:-250}; source devrun/fclib.sh
C=$F-ssa/ssa
[ -d $C ] && prove s2b 240 --recipe h200-4k-multikey --models ssa --eval-only --checkpoint $C --needle-routing \
  --tasks niah_single_2 --depths 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 --eval-lengths 256K
echo "end t=$SECONDS"
