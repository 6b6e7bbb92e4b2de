#!/usr/bin/env bash
# Launch `python -m train` under torchrun, on one node or several. `scripts/launch.sh -h` for usage.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: scripts/launch.sh [HYDRA_OVERRIDES...]

Runs `torchrun <settings> -m train HYDRA_OVERRIDES...`. Every argument goes to `python -m train`
unchanged (e.g. parallel=ddp experiment=smoke train.steps=100 hydra.run.dir=runs/x); relative paths
in them are relative to the current directory, as with `python -m train`.

Settings (environment variables, default in brackets):
  NNODES          number of nodes [1]
  NODE_RANK       rank of this node, 0..NNODES-1 [0]
  NPROC_PER_NODE  processes on this node [the GPUs nvidia-smi lists (or CUDA_VISIBLE_DEVICES
                  names), else 1]
  RDZV_ENDPOINT   host:port of the c10d rendezvous, on node 0 [localhost:29500]. With NNODES=1
                  and RDZV_ENDPOINT unset, torchrun --standalone picks a free local port instead,
                  so several single-node jobs can share a machine.
  RUN_ID          rendezvous id, the same on every node of one job [ssa-train]
With the c10d rendezvous torchrun numbers the nodes itself (it ignores NODE_RANK and says so), so
global rank 0, which writes metrics and checkpoints, may be on any node: give all nodes one run
directory on a shared filesystem.
Every other variable (NCCL_*, CUDA_VISIBLE_DEVICES, OMP_NUM_THREADS, ...) reaches the training
processes untouched. torchrun is used if it is on PATH, else `python -m torch.distributed.run`.

Examples:
  # one node, all its GPUs
  scripts/launch.sh parallel=ddp experiment=gpu_125m_32k

  # one node, 2 CPU processes (gloo)
  NPROC_PER_NODE=2 scripts/launch.sh parallel=ddp experiment=smoke

  # two nodes: run this on each node, with <i> = 0 on node 0 and 1 on node 1 (node0 = the host
  # name or address of node 0; the run directory must be on a filesystem both nodes see)
  NNODES=2 NODE_RANK=<i> RDZV_ENDPOINT=node0:29500 scripts/launch.sh parallel=ddp hydra.run.dir=/shared/runs/x
USAGE
}

for arg in "$@"; do
    if [[ "$arg" == -h || "$arg" == --help ]]; then
        usage
        exit 0
    fi
done

gpu_count() {
    local n=0
    if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
        n=$(tr ',' '\n' <<<"$CUDA_VISIBLE_DEVICES" | grep -c . || true)
    elif command -v nvidia-smi >/dev/null 2>&1; then
        n=$(nvidia-smi --list-gpus 2>/dev/null | grep -c '^GPU' || true)
    fi
    if [[ "$n" -gt 0 ]]; then echo "$n"; else echo 1; fi
}

NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
NPROC_PER_NODE="${NPROC_PER_NODE:-$(gpu_count)}"
RUN_ID="${RUN_ID:-ssa-train}"

if [[ "$NNODES" == 1 && -z "${RDZV_ENDPOINT:-}" ]]; then
    rdzv=(--standalone)
else
    if [[ -z "${RDZV_ENDPOINT:-}" ]]; then
        echo "launch.sh: NNODES=$NNODES but RDZV_ENDPOINT is unset: using localhost:29500, which the other" \
            "nodes cannot reach; set RDZV_ENDPOINT=<node 0 host>:29500 on every node" >&2
    fi
    RDZV_ENDPOINT="${RDZV_ENDPOINT:-localhost:29500}"
    rdzv=(--rdzv-backend=c10d "--rdzv-endpoint=$RDZV_ENDPOINT" "--rdzv-id=$RUN_ID")
fi

if command -v torchrun >/dev/null 2>&1; then
    launcher=(torchrun)
elif command -v python >/dev/null 2>&1; then
    launcher=(python -m torch.distributed.run)
else
    launcher=(python3 -m torch.distributed.run)
fi

# `-m train` must import from this repository even when it is not pip-installed and the script is
# called from elsewhere; the working directory stays the caller's (relative paths keep meaning).
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$repo_root${PYTHONPATH:+:$PYTHONPATH}"

cmd=("${launcher[@]}" "--nnodes=$NNODES" "--node-rank=$NODE_RANK" "--nproc-per-node=$NPROC_PER_NODE"
    "${rdzv[@]}" -m train "$@")
echo "launch.sh (node $NODE_RANK of $NNODES): ${cmd[*]}" >&2
exec "${cmd[@]}"
