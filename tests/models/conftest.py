"""Model tests run single-threaded.

They are dominated by many small convolutions and norm layers; with two intra-op threads
on a busy 2-core machine each parallel region can wait a scheduler slice for the second
thread (a 16×32×32 conv measured 30 ms with 2 threads against 0.1 ms with 1), so one
thread is both faster here and robust to load. The previous setting is restored.
"""

import pytest
import torch


@pytest.fixture(scope="package", autouse=True)
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
