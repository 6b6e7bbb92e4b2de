"""SSA block selector: pyramid of key summaries + beam search (PyTorch reference in ``reference.py``)."""

from ssa_kernels.selector.reference import (
    Selection,
    key_pyramid,
    query_summary,
    routed_bounds,
    routing_scores,
    select_blocks,
)

__all__ = ["Selection", "key_pyramid", "query_summary", "routed_bounds", "routing_scores", "select_blocks"]
