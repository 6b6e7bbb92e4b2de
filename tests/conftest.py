"""Test session setup. Without a GPU, Triton kernels run in Triton's interpreter: TRITON_INTERPRET is
read when a kernel is decorated, so it is set here, before any test imports a kernel module.

Under pytest-xdist (the README's ``-n auto``) each worker gets an equal share of the cores for its torch
threads and for the processes its tests start (OMP_NUM_THREADS, set before torch is imported): with two
workers on two cores and two threads each, small-tensor training tests ran 3-7x slower than alone."""

import os
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = str(min(_share, int(os.environ.get("OMP_NUM_THREADS", _share))))

import pytest  # noqa: E402
import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    """The stdlib corpus, built once and shared by every job (data.cache_dir) of the distributed tests."""
    from data import build_stdlib_corpus

    cache = tmp_path_factory.mktemp("data-cache")
    build_stdlib_corpus(str(cache))
    return cache


MAX_WORKERS = 4  # -n auto: the multi-process tests start 2-5 processes each; more workers only contend


def pytest_xdist_auto_num_workers(config) -> int:
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))
