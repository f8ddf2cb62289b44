"""Fixtures of the training-engine tests."""

from __future__ import annotations

import pytest
import torch

from normlab.train import config_from_dict


@pytest.fixture
def tiny_config(tmp_path):
    def make(**sections):
        raw = {
            "model": {"name": "tiny", "norm": "bin"},
            "data": {"batch_size": 16},
            "optim": {"lr": 0.1, "weight_decay": 5e-4},
            "schedule": {"name": "multistep", "milestones": [1], "gamma": 0.5},
            "train": {"epochs": 2, "device": "cpu", "seed": 3},
            "run": {"out_dir": str(tmp_path / "runs"), "name": "tiny", "progress": False},
        }
        for key, value in sections.items():
            raw[key] = {**raw.get(key, {}), **value}
        return config_from_dict(raw)

    return make


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: the CPU is shared, and spinning OpenMP workers then stall."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
