#!/bin/bash
# Issue 6 (after fc64.sh, on the same warm machine; ~570 s): fc64's checkpoint. (1) --recipe h200-4k-prose's search on
# niah_multikey_1 at 256K over the 8 other depths fc63 was read at (with fc64's 8: 16); (2) the same 8 recipe depths
# with 112 routed blocks (7,168 tokens: the default attention.ssa.topk_blocks, the budget issue 4's kernels are timed
# at) instead of 64; (3) niah_single_2 at 256K with the recipe's search.
# --eval-ssa is replaced as a whole by a later occurrence: every key is repeated.
# CPU smoke: NOPIP=1 PYTHONPATH=$PWD EXTRA="--smoke" EL=2048 OUT=/tmp/o64 bash devrun/fc64b.sh
TAG=fc64b; F=runs/fc64; TOTAL=${TOTAL:-570}; source devrun/fclib.sh
C=$F-ssa/ssa
[ -d $C ] || { echo "no $C: the machine went cold after fc64.sh; run fc64.sh again"; exit 1; }
ev() { local name=$1 limit=$2; shift 2
  prove $name $limit --recipe h200-4k-prose --models ssa --eval-only --checkpoint $C --needle-routing "$@"; }
ev mk 190 --tasks niah_multikey_1 --depths 0.05 0.15 0.25 0.35 0.45 0.55 0.65 0.9 --eval-lengths ${EL:-256K}
ev k112 190 --tasks niah_multikey_1 --eval-lengths ${EL:-256K} \
  --eval-ssa node_score=bound leaf_score=bound "beam_widths=[64,256]" topk_blocks=112
ev s2 185 --tasks niah_single_2 --eval-lengths ${EL:-256K}
echo "end t=$SECONDS"
