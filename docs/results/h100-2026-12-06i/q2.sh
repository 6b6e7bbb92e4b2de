#!/bin/bash
# Thirty-fifth session, call 3 (the warm machine of q1.sh): q1.sh's block-128 run read on niah_single_1 and
# niah_single_2 at 256K (8 depths), then niah_single_2 at 1M (3 depths) with what time is left.
# CPU smoke: NOPIP=1 PYTHONPATH=$PWD EXTRA="--smoke" L2=2048 L3=4096 OUT=/tmp/q2 bash devrun/q2.sh
TAG=q2; F=runs/q128; TOTAL=${TOTAL:-575}; source devrun/fc65lib.sh
EV128=(--eval-ssa node_score=bound leaf_score=bound "beam_widths=[64,256,512]" topk_blocks=32)
trained
ev s256 260 "${EV128[@]}" --tasks niah_single_1 niah_single_2 --eval-lengths ${L2:-256K}
ev s1m 300 "${EV128[@]}" --tasks niah_single_2 --eval-lengths ${L3:-1M} --depths 0.2 0.5 0.8
echo "end t=$SECONDS"
