#!/bin/bash
# Issue 6: time and GPU memory of one 4M read under --recipe h200-4k-prose's evaluation settings (beams [64,256,512],
# bound node and leaf scores, 64 routed blocks) on a barely trained model (5 + 5 steps; its answer means nothing),
# to size fc67b.sh. GPU memory polled every second into $OUT/mem.txt.
# CPU smoke: NOPIP=1 PYTHONPATH=$PWD EXTRA="--smoke" L=2048 OUT=/tmp/t4m bash devrun/t4m.sh
TAG=t4m; F=runs/t4m; TOTAL=${TOTAL:-280}; source devrun/fclib.sh
(while sleep 1; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits >> $O/mem.txt 2>/dev/null; done) & POLL=$!
prove run 275 --recipe h200-4k-prose --models ssa --pretrain-override model.hf_config.rope_theta=100000000.0 \
  train.steps=5 --train-steps 5 --eval-lengths ${L:-4M} --tasks niah_single_1 --depths 0.5
grep -h '"seconds"' $F-run/ssa/eval/samples.jsonl | python3 -c "import sys,json;[print({k:v for k,v in json.loads(l).items() if k.endswith('_s') or k in ('seconds','prompt_tokens')}) for l in sys.stdin]"
kill $POLL 2>/dev/null; echo "peak MiB: $(sort -n $O/mem.txt 2>/dev/null | tail -1)"
echo "end t=$SECONDS"
