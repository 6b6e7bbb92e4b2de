"""Test session setup. Without a GPU, Triton kernels run in Triton's interpreter: TRITON_INTERPRET is
read when a kernel is decorated, so it is set here, before any test imports a kernel module."""

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    """The stdlib corpus, built once and shared by every job (data.cache_dir) of the distributed tests."""
    from data import build_stdlib_corpus

    cache = tmp_path_factory.mktemp("data-cache")
    build_stdlib_corpus(str(cache))
    return cache
