#!/bin/bash
# Issue 6 (eleventh session, 2026-12-04): a fourth run of --recipe h200-4k-wide; niah_single_1 at 1M, 12 depths, with a
# wider level-1 beam (fc32's 1M misses were lost at level 1, 512-token nodes, in 0.61 of pairs): beam_widths=[64,256,256];
# niah_multikey_2 at 4K with the same beams; the checkpoint comes back in $OUT (tiny model) for eval-only calls.
F=runs/fc33 EXTRA="--eval-ssa beam_widths=[64,256,256]" TOTAL=560 T=545 bash devrun/fc32.sh
mv ${OUT:-/tmp}/fc32.tgz ${OUT:-/tmp}/fc33.tgz
tar czf ${OUT:-/tmp}/fc33-ckpt.tgz runs/fc33/ssa/checkpoints/$(ls runs/fc33/ssa/checkpoints | tail -1) runs/fc33/ssa/*.yaml devrun/fc33.sh
ls -la ${OUT:-/tmp}
