#!/bin/bash
# Thirty-fourth session, call 2 (one H100), in order of need (most of the session's device time went on machines that
# did not start, so the full official run did not fit): 1. GPU tests of fast decoding (commit in the update, unrolled
# select, 8 warps / chunks of 32) and the wide-beam fallback test that failed in call 1; 2. the benchmark's decode pass
# at 128K and 1M, block 128 then block 64 (--decode-only); 3. the graphed decode step by kernel at the new defaults
# and around them; 4. the training selector against the reference at 512K with the code before the top-k early stop
# (devrun/old = 57cf378's ssa_kernels and bench_selector.py, not kept here; call 1 ran the new code).
O=${OUT:-/tmp}; mkdir -p $O; export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
PYTHONPATH=$PWD timeout 100 python3 -m pytest -q tests/test_ssa_decode_selector.py tests/test_ssa_decode_triton.py \
  "tests/test_ssa_selector_fast.py::test_very_wide_beams_fall_back_to_the_reference" --tb=short > $O/pytest.log 2>&1
echo "pytest rc=$? t=$SECONDS"; grep -E "^E |Error|passed|failed|^tests/" $O/pytest.log | head -30
for b in 128 64; do
  mkdir -p $O/D$b
  PYTHONPATH=$PWD timeout 70 python3 scripts/bench_attention.py --selector fast --block-size $b --decode-only \
    --out $O/D$b 2>&1 | tail -20 > $O/D$b/bench.log
  echo "decode block $b rc=$? t=$SECONDS"; grep -E "decode n=.*(graph_k|fast_graph )|wrote" $O/D$b/bench.log
  rm -f $O/D$b/*.png
done
PYTHONPATH=$PWD timeout 80 python3 scripts/profile_decode.py --block-size 128 64 --out $O/dec --variants default \
  unroll=0 commit=0 2>&1 | tail -8 | tee $O/dec.log
echo "decode profile t=$SECONDS"
PYTHONPATH=$PWD/devrun/old timeout 50 python3 devrun/old/scripts/bench_selector.py --n 524288 --ref-max 524288 \
  --check 524288 --out $O/sel-old 2>&1 | grep -E "^check" | tee $O/sel-old.log
echo "selector old t=$SECONDS"
