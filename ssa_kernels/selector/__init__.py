"""SSA block selector: pyramid of key summaries + beam search (PyTorch reference in ``reference.py``,
Triton kernels in ``fast.py``: ``select_blocks_fast``, imported on first use so this package loads without
Triton and TRITON_INTERPRET is read only then)."""

from ssa_kernels.selector.reference import (
    Selection,
    key_pyramid,
    query_summary,
    routed_bounds,
    routing_scores,
    select_blocks,
)

__all__ = [
    "Selection",
    "key_pyramid",
    "query_summary",
    "routed_bounds",
    "routing_scores",
    "select_blocks",
    "select_blocks_fast",
]


def __getattr__(name: str):
    if name == "select_blocks_fast":
        from ssa_kernels.selector.fast import select_blocks_fast

        return select_blocks_fast
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
