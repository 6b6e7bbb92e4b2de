"""Largest tensor any op produces (forward and backward), for tests of linear memory.

A quadratic tensor hides behind linear ones at small n, so tests compare the largest tensor at n
and at 4n with a tiny head dim and budget: linear code grows ~4x, an (n/B)^2 or n x n/B tensor 16x.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class MaxTensorProbe(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.max_numel = 0
        self.max_op = ""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.numel() > self.max_numel:
                self.max_numel, self.max_op = t.numel(), f"{func} {tuple(t.shape)}"
        return out
