"""SSA decoding with a KV cache: per-token selection through incrementally updated key prefix sums
(PyTorch reference in ``reference.py``; its docstring states the selection rules and where they meet).
``decode_attention_triton`` (``triton.py``) is the Triton flash-decoding kernel of the attention step; it is
imported on first use, so this package loads without Triton (and TRITON_INTERPRET is read only then). So is
``fast.py``: ``DecodePyramid``, ``fast_decode_step`` and ``SSADecodeGraph``, the whole step (state update,
selection, attention) as Triton kernels reading the length on the device, capturable in one CUDA graph."""

from ssa_kernels.decode.reference import DecodeState, causal_rows_attention, ssa_decode_step

__all__ = [
    "DecodePyramid",
    "DecodeState",
    "SSADecodeGraph",
    "causal_rows_attention",
    "decode_attention_triton",
    "fast_decode_step",
    "ssa_decode_step",
]


def __getattr__(name: str):
    if name == "decode_attention_triton":
        from ssa_kernels.decode.triton import decode_attention_triton

        return decode_attention_triton
    if name in ("DecodePyramid", "SSADecodeGraph", "fast_decode_step"):
        from ssa_kernels.decode import fast

        return getattr(fast, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
