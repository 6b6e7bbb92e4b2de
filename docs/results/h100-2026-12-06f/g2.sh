#!/bin/bash
# Thirty-second session, call 2 (one H100): the Gluon forward with one head of 64 rows a consumer (GL_HEADS=1) and
# 128 keys a step (GL_KEYS=128), the dQ pass at 128 keys a step. 1. their GPU tests (18, every _gluon_case);
# 2. forward and backward variants at 1M, block 128; 3. the official benchmark at block 128 with the best of each.
O=${OUT:-/tmp}; mkdir -p $O; export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 150 python3 -m pytest -q $(cat devrun/tests2.txt) 2>&1 | tail -4 | tee $O/pytest.log
echo "pytest rc=${PIPESTATUS[0]} t=$SECONDS"
timeout 70 python3 scripts/bench_attention_kernel.py --block-size 128 --sizes "" --sweep-T 1048576 --reps 3 \
  --fwd-variants " ; fwd:GL_HEADS=1; fwd:GL_HEADS=1,GL_KEYS=128; fwd:GL_HEADS=1,GL_KEYS=128,STAGES=3" 2>&1 \
  | grep -E "best|err|Error" | tee $O/fwd-b128.log
echo "fwd t=$SECONDS"
timeout 90 python3 scripts/bench_attention_kernel.py --block-size 128 --sizes "" --sweep-T 1048576 --reps 3 \
  --bwd-variants " ; dq:GL_KEYS=128; dkdv:STAGES=3; dq:GL_KEYS=128 dkdv:STAGES=3" 2>&1 \
  | grep -E "best|err|Error" | tee $O/bwd-b128.log
echo "bwd t=$SECONDS"
KC=$(python3 - $O/fwd-b128.log $O/bwd-b128.log <<'PY'
import re, sys
out = []
for f, name in zip(sys.argv[1:], ("fwd", "bwd")):
    best = {m.group(1): float(m.group(2)) for m in re.finditer(rf"variant {name} \[(.*?)\] best +([\d.]+) ms", open(f).read())}
    d = best.get("defaults")
    alt = min((v, k) for k, v in best.items() if k != "defaults") if len(best) > 1 else None
    if d and alt and alt[0] < 0.985 * d:
        out.append(alt[1])
print(f"--kernel-config '{' '.join(out)}'" if out else "")
PY
)
echo "kernel config: $KC"
mkdir -p $O/A
eval timeout 220 python3 scripts/bench_attention.py --selector fast --block-size 128 --out $O/A --n 16K 128K 1M --decode-n \
  --dense-fwd-max 131072 --dense-fwdbwd-max 131072 $KC 2>&1 | tail -30 | tee $O/A/bench.log
echo "run A rc=${PIPESTATUS[0]} t=$SECONDS"
