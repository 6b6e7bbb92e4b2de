"""SSA block-sparse attention. ``reference`` is the PyTorch oracle and CPU path; ``triton.py`` holds the
Triton forward/backward kernels (``sparse_attention_triton``), imported on first use so this package loads
without Triton (and TRITON_INTERPRET is read only then)."""

from ssa_kernels.attention.reference import AUTO_CHUNK_BYTES, auto_chunk_blocks, sparse_attention

__all__ = ["AUTO_CHUNK_BYTES", "auto_chunk_blocks", "sparse_attention", "sparse_attention_triton"]


def __getattr__(name: str):
    if name == "sparse_attention_triton":
        from ssa_kernels.attention.triton import sparse_attention_triton

        return sparse_attention_triton
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
