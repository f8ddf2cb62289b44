"""Fixtures of the functional tests."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: these tests run many tiny ops, where the thread pool's
    hand-offs cost more than the work (about 8x the wall time on a shared 2-core CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
