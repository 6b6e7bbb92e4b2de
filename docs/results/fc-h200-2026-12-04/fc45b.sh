#!/bin/bash
# Issue 6 (fourteenth session): after fc45.sh, on the same warm machine. First teacher-forced multikey at 4K / 16K /
# 64K of the dense model, of the dense model routed by its own attention's top 16 blocks (--oracle 16,
# attention.ssa.router=oracle: does SSA's fixed-size attended set read beyond 4K what the dense softmax cannot?),
# and of the converted ssa model with its router and with the oracle. Then the converted ssa checkpoint (fc45-c) with
# the recipe's eval settings on niah_multikey_2 at 64K / 256K and niah_single_1 at 1M, with leaf bound scores on
# multikey at 16K, then the rank probe on it (4K / 16K) and teacher-forced probes of it and of the dense model at 4K.
# CPU smoke: NOPIP=1 PYTHONPATH=$PWD EXTRA="--smoke" LM="2048" LS1="2048" RL="1K" PL=1024 OL="1024 2048" OUT=/tmp/o45 bash devrun/fc45b.sh
TAG=fc45b; F=runs/fc45; TOTAL=${TOTAL:-575}; source devrun/fclib.sh
[ -d $F-c/ssa/checkpoints ] || { echo "no $F-c/ssa/checkpoints: the machine went cold; run fc45.sh again"; exit 1; }
D=$(ls -d $F-d/dense/checkpoints/step_*/model | tail -1); C=$(ls -d $F-c/ssa/checkpoints/step_*/model | tail -1)
# teacher-forced, 8 samples: the dense model alone, then routed by its own attention's top 16 blocks (router=oracle:
# the upper bound of any router for it; then with the blocks of the largest one-row mass, --oracle-rows max, the bound
# of a router distilled with attention.ssa.distill_rows=max, added in the fifteenth session), then the converted ssa
# model with its router and with the oracle
for a in "$D" "$D --oracle 16 --local-window 256" "$D --oracle 16 --local-window 256 --oracle-rows max" "$C" \
  "$C --oracle 16"; do
  t=$((TOTAL - SECONDS - 300)); [ $t -lt 60 ] || t=60; [ $t -gt 10 ] || break
  timeout $t python3 scripts/probe_answers.py $a --tasks niah_multikey_2 --length ${OL:-4096 16384 65536} \
    --samples 8 2>/dev/null | tee -a $O/oracle.jsonl
done
echo "oracle rc=$? t=$SECONDS"
E="--recipe h200-4k-multikey --eval-only --depths 0.2 0.4 0.6 0.8 --models ssa --checkpoint $F-c/ssa --needle-routing"
prove m 200 $E --tasks niah_multikey_2 --eval-lengths ${LM:-64K 256K}
prove lb 100 $E --tasks niah_multikey_2 --eval-ssa node_score=bound leaf_score=bound "beam_widths=[64]" \
  --eval-lengths ${LB:-16K}
prove s 100 $E --tasks niah_single_1 --eval-lengths ${LS1:-1M}
mkdir -p $F-p && ln -sfn $PWD/$F-c/ssa $F-p/ssa && ln -sfn $PWD/$F-d/dense $F-p/dense
probes $F-p
# (the distillation kernel's GPU tests and bench_distill moved to k46.sh in the fifteenth session)
echo "end t=$SECONDS"
