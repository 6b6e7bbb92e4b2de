#!/bin/bash
# Issue 6, for the next device session (written 2026-12-04, twelfth session), call 1 of 3: --recipe h200-4k-bound end
# to end on a fresh machine (stage 1 + ssa stage 2 as h200-4k-attended, then niah_single_1 at 1M with bound node
# scores and beams of 64 at 12 positions, as many as the call's time allows; fc35/fc37: 12 of 12). Issue fc42b.sh
# the moment it returns. Copy fclib.sh and fc42*.sh to devrun/, carry .whl and devrun:  bash devrun/fc42.sh
# CPU smoke (~6 min): NOPIP=1 PYTHONPATH=$PWD EXTRA="--smoke" EL=2048 OUT=/tmp/o bash devrun/fc42.sh
TAG=fc42; source devrun/fclib.sh
prove ssa 560 --recipe h200-4k-bound --models ssa --needle-routing --eval-lengths ${EL:-1M}
# the stage-2 directory the next calls read: $F-ssa/ssa (checkpoint), $F-ssa/pretrain (stage 1)
echo "end t=$SECONDS"
