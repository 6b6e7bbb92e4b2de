#!/bin/bash
# Issues 7 and 8 on a multi-GPU kind (never lent up to the sixteenth session): the Llama-3-8B-shaped SSA model's
# longest context per rung and its step time against dense attention, with scripts/bench_ladder.py's composed rungs.
# Pick by the kind held: KIND=x2 (2 x H200, 256 GiB host), x4, x8 (8 x H200, 560 GiB host). Planner estimates
# (python -m parallel.plan --model conf/model/llama_8b.yaml --gpus G --gpu-mem-gib 139 --host-mem-gib H --longest
# --tiled-layer 16384, with the eighteenth session's host rule): offload with Ulysses inside and the tiled layer
# reaches ~395K on x2, ~790K on x4, ~1.58M on x8; nested_offload is host-bound (bf16 layer inputs) at 88K / 1.03M /
# 1.20M. Every rank builds the 8B model on the host before ZeRO-3 partitions it (no zero.Init), in bf16 under bf16
# since the eighteenth session (parallel.offload.build_dtype=auto); the planner counts it (x8: 209 GiB of host for the
# model states, ZeRO-3's own 18 bytes a parameter; it was 371 GiB with the fp32 build).
# Copy ladlib.sh (docs/results/ladder-h200-2026-12-05b/) and l49.sh to devrun/; carry .whl, .whl-ds and devrun:
# the offload rungs need DeepSpeed, which the device image lacks (.whl-ds/, installed by ladlib.sh).
# One device call each (600 s): CALL=1 the SSA search upward, CALL=2 SSA against dense at the length dense fits.
# CPU check: DRY=1 (prints commands and planner estimates only).
KIND=${KIND:-x2}; CALL=${CALL:-1}; source devrun/ladlib.sh
export NCCL_NVLS_ENABLE=0
case $KIND in
  x2) G=2; SEARCH="256K 384K"; PAIR=128K ;;
  x4) G=4; SEARCH="512K 768K"; PAIR=256K ;;
  x8) G=8; SEARCH="1M 1536K"; PAIR=512K ;;
esac
B="python3 scripts/bench_ladder.py --out $O --model llama_8b --steps 2 ${DRY:+--dry-run}"
if [ "$CALL" = 1 ]; then
  timeout 580 $B --rungs offload_sp${G}_layer --attention ssa --seq-lens $SEARCH --search --timeout-s 280 \
    --budget-s 300 2>&1 | tail -8 | tee $O/l49-$KIND-search.log
else
  timeout 580 $B --rungs offload_sp${G}_layer --attention ssa dense --seq-lens $PAIR --timeout-s 280 2>&1 \
    | tail -8 | tee $O/l49-$KIND-pair.log
fi
