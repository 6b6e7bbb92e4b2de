#!/usr/bin/env bash
# Install the project (editable) with its dev tools. torch is installed first, pinned, only when
# missing: a bare `torch` requirement would otherwise pull a multi-GB build that may not fit the
# machine (a GPU image keeps its own torch). Set TORCH_SPEC to choose another version.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
"$PY" -m pip install -q -e ".[dev]"
