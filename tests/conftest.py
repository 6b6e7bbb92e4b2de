"""Test session setup. Without a GPU, Triton kernels run in Triton's interpreter: TRITON_INTERPRET is
read when a kernel is decorated, so it is set here, before any test imports a kernel module."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
