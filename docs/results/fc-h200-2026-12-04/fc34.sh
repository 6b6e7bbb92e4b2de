#!/bin/bash
# Issue 6: a fifth run of --recipe h200-4k-wide, niah_single_1 at 1M with beam_widths=[64,256,256] at 6 new positions.
F=runs/fc34 EXTRA="--eval-ssa beam_widths=[64,256,256]" DEPTHS="0.04 0.2 0.36 0.52 0.68 0.84" TOTAL=0 T=500 bash devrun/fc32.sh
mv ${OUT:-/tmp}/fc32.tgz ${OUT:-/tmp}/fc34.tgz; du -sh runs/fc34/ssa/checkpoints/*/* runs/fc34/ssa/checkpoints/*/*/* | sort -h | tail
