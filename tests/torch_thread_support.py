"""A module-scoped autouse fixture: import it into a test module (`from torch_thread_support import
one_thread  # noqa: F401`) and its tests run torch on one thread. Tiny matrices only thrash in torch's
thread pool on a shared CI machine (10x slower)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
