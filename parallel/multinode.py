"""Rung ``multinode``: sequence parallelism across nodes under torchrun (ALST's multi-node recipe).

One Ulysses group spans ``parallel.sp`` ranks on several nodes (``parallel.sp: 0``, the default, is every
process of the job): each rank holds ``T/sp`` tokens of a row, and the all-to-all before and after
attention crosses the network between nodes. The mechanics are the ``ulysses`` rung's
(``parallel/ulysses.py``: head/sequence all-to-alls, kv heads repeated when sp does not divide them,
padding to a multiple of sp x block, SSA's router block means through the same all-to-all); this rung
only lets the group leave the node, where ``ulysses`` refuses. Its limit is the attention heads:
``parallel.sp`` must divide them (32 for Llama-3-8B). Past that, or where the network is slow for
all-to-alls, ``parallel=ring`` with ``parallel.sp`` = the GPUs of a node and ``parallel.cp`` = the
nodes keeps Ulysses inside each node and passes k/v around a ring across nodes.

The rank layout (``parallel/dims.py``) puts ``sp`` consecutive ranks in a group; torchrun numbers the
ranks of one node consecutively, so a group holds whole nodes when ``sp`` is a multiple of the
processes per node (or sits inside one when it divides them); other sizes are refused.
"""

from __future__ import annotations

import logging

from torch import nn

from parallel.ddp import apply_ddp
from parallel.dims import ParallelDims, ParallelError
from parallel.ulysses import shard_sequences

log = logging.getLogger(__name__)


def apply_multinode(model: nn.Module, dims: ParallelDims) -> nn.Module:
    """Shard sequences over an SP group that may span nodes, and DDP the result over the world (dp x sp)."""
    local = dims.local_world
    if dims.sp % local and local % dims.sp:
        whole = [local * k for k in range(1, dims.world // local + 1) if dims.world % (local * k) == 0]
        raise ParallelError(
            f"parallel.sp={dims.sp} splits a node of {local} processes between SP groups: under parallel=multinode "
            f"use a multiple of the processes per node, parallel.sp in {whole} (0: all {dims.world})"
        )
    log.info("multinode: parallel.sp=%d over %d nodes of %d processes (dp=%d)", dims.sp, dims.nnodes, local, dims.dp)
    return apply_ddp(shard_sequences(model, dims, "multinode", across_nodes=True), dims)
