#!/bin/bash
# Issue 6, third call of the next device session (after fc35.sh and fc35b.sh; ~9.6 min, no cold start if issued at
# once): fc35's recipe (h200-4k-attended) with the 512-token level's node scores distilled too
# (attention.ssa.distill_levels=1; at 4K the only level with >= 2 nodes per row), same evaluation as fc35: 1M with
# [64,256,256] at 12 positions, then multikey at 4K. Compare fc35 (same recipe, levels 0) and fc33 (old target).
# Copy fc35.sh and this to devrun/, carry .whl and devrun:  bash devrun/fc36.sh
SSA="attention.ssa.local_window=256 attention.ssa.topk_blocks=16 attention.ssa.routing=distill attention.ssa.distill_blocks=0"
SSA="$SSA attention.ssa.beam_min=64 attention.ssa.far_distance=1024 attention.ssa.distill_target=attended"
F=${F:-runs/fc36} EXTRA="--ssa-override $SSA attention.ssa.distill_levels=1 $EXTRA" bash devrun/fc35.sh
mv ${OUT:-/tmp}/fc35.tgz ${OUT:-/tmp}/fc36.tgz
