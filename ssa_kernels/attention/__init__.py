"""SSA block-sparse attention. ``reference`` is the PyTorch oracle and CPU path; the Triton kernels follow."""

from ssa_kernels.attention.reference import AUTO_CHUNK_BYTES, auto_chunk_blocks, sparse_attention

__all__ = ["AUTO_CHUNK_BYTES", "auto_chunk_blocks", "sparse_attention"]
