#!/bin/bash
# Issue 6, twentieth session (~570 s, one GPU): the multikey target read on niah_multikey_1 (RULER's essay haystack with
# the needle and three distractor needles of other keys), which no run has evaluated; every earlier multikey figure is
# niah_multikey_2 (a haystack made only of needles: at 256K thousands of key-value lines). --recipe h200-4k-multikey
# (the bound recipe that met the single needle, stage 2 with 8 extra lookups per multikey row; its training rows
# already hold multikey_1 samples), ssa only, stage 2 shortened to 3.6 min to fit one call, then multikey_1 at 16K /
# 64K / 256K over 4 depths with needle routing, then 1M if the call's time allows.
TAG=fc60; F=runs/fc60; TOTAL=${TOTAL:-575}; source devrun/fclib.sh
prove ssa 500 --recipe h200-4k-multikey --models ssa --needle-routing --tasks niah_multikey_1 --depths 0.2 0.4 0.6 0.8 \
  --time-budget-min ${TB:-3.6} --eval-lengths ${EL:-16K 64K 256K}
C=$F-ssa/ssa
[ -d $C ] && prove m1 120 --recipe h200-4k-multikey --models ssa --eval-only --checkpoint $C --needle-routing \
  --tasks niah_multikey_1 --depths 0.2 0.4 0.6 0.8 --eval-lengths ${EL2:-1M}
echo "end t=$SECONDS"
