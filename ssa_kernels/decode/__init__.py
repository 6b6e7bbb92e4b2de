"""SSA decoding with a KV cache: per-token selection through incrementally updated key prefix sums
(PyTorch reference in ``reference.py``; its docstring states the selection rules and where they meet)."""

from ssa_kernels.decode.reference import DecodeState, causal_rows_attention, ssa_decode_step

__all__ = ["DecodeState", "causal_rows_attention", "ssa_decode_step"]
