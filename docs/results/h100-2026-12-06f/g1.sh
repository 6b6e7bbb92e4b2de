#!/bin/bash
# Thirty-second session, call 1 (one H100): the dK/dV pass's lse / delta by TMA with q and dO (gluon.row_stats).
# 1. Gluon dK/dV GPU tests (both block sizes, every case) and the bf16 test; 2. the backward at 1M, block 128 and 64,
# with stage variants; 3. the official benchmark at block 128.
O=${OUT:-/tmp}; mkdir -p $O; export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 200 python3 -m pytest -q tests/test_ssa_attention_triton.py -k "gluon_dkdv or bf16" 2>&1 | tail -6 | tee $O/pytest.log
echo "pytest rc=${PIPESTATUS[0]} t=$SECONDS"
timeout 80 python3 scripts/bench_attention_kernel.py --block-size 128 --sizes "" --sweep-T 1048576 --reps 3 \
  --bwd-variants " ; dkdv:STAGES=3; dkdv:STAGES=5" 2>&1 | grep -E "best|err|Error" | tee $O/bwd-b128.log
echo "bwd b128 rc=${PIPESTATUS[0]} t=$SECONDS"
timeout 40 python3 scripts/bench_attention_kernel.py --sizes "" --sweep-T 1048576 --reps 3 --bwd-variants " " 2>&1 \
  | grep -E "best|err|Error" | tee $O/bwd-b64.log
echo "bwd b64 t=$SECONDS"
KC=$(python3 - $O/bwd-b128.log <<'PY'
import re, sys
best = {m.group(1): float(m.group(2)) for m in re.finditer(r"variant bwd \[(.*?)\] best +([\d.]+) ms", open(sys.argv[1]).read())}
d = best.get("defaults")
alt = min((v, k) for k, v in best.items() if k != "defaults") if len(best) > 1 else None
print(f"--kernel-config {alt[1]}" if d and alt and alt[0] < 0.985 * d else "")
PY
)
echo "kernel config: '$KC'"
mkdir -p $O/A
timeout 220 python3 scripts/bench_attention.py --selector fast --block-size 128 --out $O/A --n 16K 128K 1M --decode-n \
  --dense-fwd-max 131072 --dense-fwdbwd-max 131072 $KC 2>&1 | tail -30 | tee $O/A/bench.log
echo "run A rc=${PIPESTATUS[0]} t=$SECONDS"
