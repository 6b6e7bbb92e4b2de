#!/bin/bash
# Shared by fc66*.sh (issue 6, twenty-sixth session's plan for the next): set TAG, F (runs/fc66) and TOTAL, then
# source this (it sources fclib.sh, docs/results/fc-h200-2026-12-04/). Defines
#   R                      fc66.sh's run directory: pretrain/, ssa/, swa/, dense/ (checkpoints stay on the machine)
#   need MODEL..           stop the call unless $R/MODEL exists (the machine went cold after fc66.sh)
#   ev NAME SECONDS MODEL ..  an eval-only read of $R/MODEL under the recipe (fclib's prove; no --needle-routing:
#                          its per-step searches in the PyTorch decoder tripled a 1M sample's decode in fc65)
# The wide Triton search passed its GPU test in the twenty-sixth session (docs/results/h100-2026-12-05j/call5/), so
# these scripts no longer run it first.
source devrun/fclib.sh
R=$F-run
need() { local m; for m in "$@"; do
  [ -d $R/$m ] || { echo "no $R/$m: the machine went cold after fc66.sh; run it again"; exit 1; }; done; }
ev() { local name=$1 limit=$2 model=$3; shift 3
  prove $name $limit --recipe h200-4k-prose --models $model --eval-only --checkpoint $R/$model "$@"; }
