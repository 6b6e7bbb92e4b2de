#!/bin/bash
# Shared setup of the ladder device scripts (l53.sh, docs/results/ladder-multi-gpu/l49.sh): copy it to devrun/ beside
# them and source it. Installs the carried wheels once per machine: .whl/ (hydra, omegaconf, datasets, ...) into
# /tmp/site and .whl-ds/ (DeepSpeed 0.19.8 and its dependencies, for the offload rungs; the device image has no
# DeepSpeed) apart into /tmp/site-ds, then exports the environment (ninja on PATH for DeepSpeed's JIT-built CPU Adam,
# one torch-extensions cache per machine). Carry .whl, .whl-ds and devrun. NOPIP=1 or DRY=1: install nothing (CPU).
# l50.sh and l52.sh predate it and keep these lines inline, as they ran.
O=${OUT:-/tmp}; mkdir -p $O
if [ -z "${NOPIP:-}${DRY:-}" ]; then
  [ -d /tmp/site/hydra ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  [ -d /tmp/site-ds/deepspeed ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site-ds .whl-ds/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:/tmp/site-ds${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
export PATH=/tmp/site-ds/bin:$PATH TORCH_EXTENSIONS_DIR=/tmp/tex PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
