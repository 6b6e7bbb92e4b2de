"""Subquadratic Sparse Attention kernels (SSA). The reference and Triton kernels arrive with issues 3 and 4."""
