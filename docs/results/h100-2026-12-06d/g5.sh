#!/bin/bash
# Thirtieth session, call 5: debug the Gluon dK/dV pass on tiny cases (each in its own process).
O=${OUT:-/tmp}; mkdir -p $O; export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD CUDA_LAUNCH_BLOCKING=1
for args in "2 1 4 1 256 2" "4 1 4 1 256 2" "2 1 4 1 512 4" "4 2 8 2 1000 3"; do
  echo "== $args"; timeout 60 python3 devrun/dbg.py $args 2>&1 | grep -v Warning | tail -5
done | tee $O/dbg.log
which compute-sanitizer && timeout 120 compute-sanitizer --print-limit 5 python3 devrun/dbg.py 2 1 4 1 256 2 2>&1 | tail -30 | tee $O/sanitizer.log
echo t=$SECONDS
