#!/bin/bash
# Thirty-third session, call 2 (one H100): 1. forward variants at 1M, block 128 (PINGPONG with GL_OVERLAP);
# 2. the official benchmark at block 128 three times in a row (run-to-run spread of SSA and Flex), with PINGPONG if
# it was >= 1.5% faster; 3. the official benchmark at block 64 once.
O=${OUT:-/tmp}; mkdir -p $O; export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 60 python3 scripts/bench_attention_kernel.py --block-size 128 --sizes "" --sweep-T 1048576 --reps 5 \
  --fwd-variants " ; fwd:PINGPONG=1; fwd:PINGPONG=1,STAGES=2" 2>&1 | grep -E "best|err|Error" | tee $O/fwd-b128.log
echo "fwd128 t=$SECONDS"
K=$(python3 - $O/fwd-b128.log <<'PY'
import re, sys
best = {m.group(1): float(m.group(2)) for m in re.finditer(r"variant fwd \[(.*?)\] best +([\d.]+) ms", open(sys.argv[1]).read())}
d = best.get("defaults")
alt = min((v, k) for k, v in best.items() if k != "defaults") if len(best) > 1 else None
print(alt[1] if d and alt and alt[0] < 0.985 * d else "")
PY
)
echo "block 128 config: '$K'"
KC=(); [ -n "$K" ] && KC=(--kernel-config "$K")
for r in A B C; do
  mkdir -p $O/$r
  timeout 120 python3 scripts/bench_attention.py --selector fast --block-size 128 --out $O/$r --n 16K 128K 1M \
    --decode-n --dense-fwd-max 131072 --dense-fwdbwd-max 131072 "${KC[@]}" 2>&1 | tail -30 > $O/$r/bench.log
  echo "run $r rc=$? t=$SECONDS"; grep -E "n= 1048576 (fwd|fwdbwd) " $O/$r/bench.log
done
mkdir -p $O/D
timeout 150 python3 scripts/bench_attention.py --selector fast --out $O/D --n 16K 128K 1M --decode-n \
  --dense-fwd-max 131072 --dense-fwdbwd-max 131072 2>&1 | tail -30 > $O/D/bench.log
echo "run D (block 64) rc=$? t=$SECONDS"; grep -E "n= 1048576 (fwd|fwdbwd) " $O/D/bench.log
rm -f $O/*/*.png  # redrawn locally from the JSON (the device returns a limited number of files)
