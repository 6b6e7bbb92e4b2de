"""Random inputs and the error measure shared by the sparse-attention tests (reference and Triton)."""

from __future__ import annotations

import torch


def relerr(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def random_indices(bt: int, hkv: int, nb: int, s: int, g: torch.Generator, max_len: int | None = None) -> torch.Tensor:
    """[bt, hkv, nb, s] int64: per (batch, kv head, query block i) the diagonal i plus a random subset of [0, i)
    of random size, at most ``max_len`` (default s) entries in all, sorted, -1 padded; rows have different
    valid counts."""
    max_len = s if max_len is None else max_len
    out = torch.full((bt, hkv, nb, s), -1, dtype=torch.int64)
    for b in range(bt):
        for h in range(hkv):
            for i in range(nb):
                n = int(torch.randint(0, min(i, max_len - 1) + 1, (), generator=g))
                row = sorted([i] + torch.randperm(i, generator=g)[:n].tolist())
                out[b, h, i, : len(row)] = torch.tensor(row, dtype=torch.int64)
    return out


def random_docs(bt: int, t: int, n_docs: int, g: torch.Generator) -> torch.Tensor:
    """[bt, t] nondecreasing document ids with n_docs ragged documents (each >= 1 token)."""
    rows = []
    for _ in range(bt):
        cuts = torch.randperm(t - 1, generator=g)[: n_docs - 1] + 1
        row = torch.zeros(t, dtype=torch.int64)
        row[cuts] = 1
        rows.append(row.cumsum(0))
    return torch.stack(rows)
