#!/bin/bash
# Issue 6, twentieth session (one H100, ~560 s): fc52's dense stage 2 on 16K rows read multikey_2 1.00 at 4K but 0.25
# at 16K after 660 steps. Here the same recipe's dense stage 2 trains on 16K rows for up to 2,400 steps (<= 5.0 min,
# ~3.6x fc52's), read on multikey_2 at 4K / 16K / 64K over 8 depths: does more training at 16K make the lookup work
# there? (No conversion to SSA: the router can only learn what the dense attention does, fc45's probe.)
TAG=fc59; F=runs/fc59; TOTAL=${TOTAL:-570}; source devrun/fclib.sh
M="--recipe h200-4k-multikey --tasks niah_multikey_2 --depths 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8"
R="--train-len ${TL:-16384} --override data.synthetic.extra_queries=8 data.synthetic.extra_order=random train.micro_batch=2"
prove d 560 $M --models dense $R --train-steps ${TS:-2400} --time-budget-min ${TD:-5.0} --eval-lengths ${LD:-4K 16K 64K}
echo "end t=$SECONDS"
