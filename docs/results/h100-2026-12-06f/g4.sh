#!/bin/bash
# Thirty-second session, call 4 (one H100): the dQ pass's softmax beside its previous step's dq product (GL_OVERLAP).
# 1. its GPU tests and the bf16 tests (default path: the new block-128 forward); 2. backward variants at 1M, block 128;
# 3. block 64: forward (one head a consumer, overlapped) and dQ variants; 4. the official benchmark at block 128 and
# at block 64, each with its best variants.
O=${OUT:-/tmp}; mkdir -p $O; export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 120 python3 -m pytest -q $(cat devrun/tests4.txt) 2>&1 | tail -4 | tee $O/pytest.log
echo "pytest rc=${PIPESTATUS[0]} t=$SECONDS"
pick() {  # the best variant of a log if 1.5% faster than the defaults, else nothing
python3 - "$@" <<'PY'
import re, sys
best = {m.group(1): float(m.group(2)) for m in re.finditer(rf"variant {sys.argv[2]} \[(.*?)\] best +([\d.]+) ms", open(sys.argv[1]).read())}
d = best.get("defaults")
alt = min((v, k) for k, v in best.items() if k != "defaults") if len(best) > 1 else None
print(alt[1] if d and alt and alt[0] < 0.985 * d else "")
PY
}
timeout 70 python3 scripts/bench_attention_kernel.py --block-size 128 --sizes "" --sweep-T 1048576 --reps 3 \
  --bwd-variants " ; dq:GL_OVERLAP=1,STAGES=3; dq:GL_OVERLAP=1,STAGES=4" 2>&1 | grep -E "best|err|Error" | tee $O/bwd-b128.log
echo "bwd128 t=$SECONDS"
timeout 45 python3 scripts/bench_attention_kernel.py --sizes "" --sweep-T 1048576 --reps 3 \
  --fwd-variants " ; fwd:GL_HEADS=1,GL_OVERLAP=1,STAGES=3; fwd:GL_HEADS=1,GL_OVERLAP=1,STAGES=4" 2>&1 | grep -E "best|err|Error" | tee $O/fwd-b64.log
echo "fwd64 t=$SECONDS"
timeout 50 python3 scripts/bench_attention_kernel.py --sizes "" --sweep-T 1048576 --reps 3 \
  --bwd-variants " ; dq:GL_OVERLAP=1,STAGES=3" 2>&1 | grep -E "best|err|Error" | tee $O/bwd-b64.log
echo "bwd64 t=$SECONDS"
K128="$(pick $O/bwd-b128.log bwd)"
K64=$(echo $(pick $O/fwd-b64.log fwd) $(pick $O/bwd-b64.log bwd))
echo "block 128 config: '$K128'; block 64 config: '$K64'"
mkdir -p $O/A $O/B
timeout 150 python3 scripts/bench_attention.py --selector fast --block-size 128 --out $O/A --n 16K 128K 1M --decode-n \
  --dense-fwd-max 131072 --dense-fwdbwd-max 131072 --kernel-config "$K128" 2>&1 | tail -30 | tee $O/A/bench.log
echo "run A rc=${PIPESTATUS[0]} t=$SECONDS"
timeout 170 python3 scripts/bench_attention.py --selector fast --out $O/B --n 16K 128K 1M --decode-n \
  --dense-fwd-max 131072 --dense-fwdbwd-max 131072 --kernel-config "$K64" 2>&1 | tail -30 | tee $O/B/bench.log
echo "run B rc=${PIPESTATUS[0]} t=$SECONDS"
