#!/bin/bash
# Thirty-fifth session, call 4 (the warm machine of q1.sh / q2.sh): the block-128 run read at 1M on niah_single_1
# and niah_multikey_1 (3 depths), then niah_single_2 at 3 more depths, with what device time is left.
TAG=q3; F=runs/q128; TOTAL=${TOTAL:-300}; source devrun/fc65lib.sh
EV128=(--eval-ssa node_score=bound leaf_score=bound "beam_widths=[64,256,512]" topk_blocks=32)
trained
ev m1m 200 "${EV128[@]}" --tasks niah_single_1 niah_multikey_1 --eval-lengths 1M --depths 0.2 0.5 0.8
ev s1mb 120 "${EV128[@]}" --tasks niah_single_2 --eval-lengths 1M --depths 0.1 0.4 0.7
echo "end t=$SECONDS"
