"""SSA decoding with a KV cache: per-token selection through incrementally updated key prefix sums
(PyTorch reference in ``reference.py``; its docstring states the selection rules and where they meet).
``decode_attention_triton`` (``triton.py``) is the Triton flash-decoding kernel of the attention step; it is
imported on first use, so this package loads without Triton (and TRITON_INTERPRET is read only then)."""

from ssa_kernels.decode.reference import DecodeState, causal_rows_attention, ssa_decode_step

__all__ = ["DecodeState", "causal_rows_attention", "decode_attention_triton", "ssa_decode_step"]


def __getattr__(name: str):
    if name == "decode_attention_triton":
        from ssa_kernels.decode.triton import decode_attention_triton

        return decode_attention_triton
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
