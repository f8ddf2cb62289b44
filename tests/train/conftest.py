"""Fixtures of the training-engine tests."""

from __future__ import annotations

import pytest

from normlab.train import config_from_dict

from .tiny import one_thread

__all__ = ["one_thread"]


@pytest.fixture
def tiny_config(tmp_path):
    def make(**sections):
        raw = {
            "model": {"name": "resnet20", "norm": "bin"},  # built by tiny_builders
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
