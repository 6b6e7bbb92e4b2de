"""SSA block selector: pyramid of key summaries + beam search (PyTorch reference in ``reference.py``,
Triton kernels in ``fast.py``: ``select_blocks_fast``, imported on first use so this package loads without
Triton and TRITON_INTERPRET is read only then)."""

from ssa_kernels.selector.reference import (
    PooledRoute,
    Selection,
    key_pyramid,
    query_summary,
    routed_bounds,
    routing_scores,
    routing_scores_pooled,
    select_blocks,
    select_blocks_pooled,
    select_by_scores,
)

__all__ = [
    "PooledRoute",
    "Selection",
    "key_pyramid",
    "query_summary",
    "routed_bounds",
    "routing_scores",
    "routing_scores_pooled",
    "select_blocks",
    "select_blocks_fast",
    "select_blocks_fast_pooled",
    "select_blocks_pooled",
    "select_by_scores",
]


def __getattr__(name: str):
    if name in ("select_blocks_fast", "select_blocks_fast_pooled"):
        from ssa_kernels.selector import fast

        return getattr(fast, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
