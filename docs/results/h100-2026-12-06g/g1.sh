#!/bin/bash
# Thirty-third session, call 1 (one H100): 1. GPU tests of the forward's PINGPONG with GL_OVERLAP, the dQ pass with
# delta computed from its own tiles (and row_stats written for dK/dV), the bf16 defaults and the routing gradient;
# 2. forward variants at 1M, block 128 (PINGPONG with the overlap); 3. a profile of fwd+bwd at 1M, block 128;
# 4. the official benchmark at block 128 (with PINGPONG if >= 1.5% faster). devrun/prof.py: ../h100-2026-12-06f/prof.py.
O=${OUT:-/tmp}; mkdir -p $O; export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 200 python3 -m pytest -q $(cat devrun/tests1.txt) 2>&1 | tail -4 | tee $O/pytest.log
echo "pytest rc=${PIPESTATUS[0]} t=$SECONDS"
timeout 60 python3 scripts/bench_attention_kernel.py --block-size 128 --sizes "" --sweep-T 1048576 --reps 3 \
  --fwd-variants " ; fwd:PINGPONG=1; fwd:PINGPONG=1,STAGES=4" 2>&1 | grep -E "best|err|Error" | tee $O/fwd-b128.log
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
timeout 50 python3 devrun/prof.py 128 "$K" 2>&1 | grep -v Warn | head -34 | tee $O/prof.log
echo "prof t=$SECONDS"
mkdir -p $O/A
KC=(); [ -n "$K" ] && KC=(--kernel-config "$K")
timeout 170 python3 scripts/bench_attention.py --selector fast --block-size 128 --out $O/A --n 16K 128K 1M --decode-n \
  --dense-fwd-max 131072 --dense-fwdbwd-max 131072 "${KC[@]}" 2>&1 | tail -30 | tee $O/A/bench.log
echo "run A rc=${PIPESTATUS[0]} t=$SECONDS"
