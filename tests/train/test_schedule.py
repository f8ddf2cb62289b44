"""Learning-rate schedules give known values; the engine applies them every step."""

from __future__ import annotations

import math

import pytest

from normlab.train import ConfigError, LRSchedule, scaled_lr, train
from normlab.train.config import OptimConfig

from .tiny import tiny_builders


def test_multistep_at_milestones():
    s = LRSchedule("multistep", epochs=164, milestones=(81, 122), gamma=0.1)
    assert s.factor(0) == 1.0 and s.factor(80.99) == 1.0
    assert s.factor(81) == pytest.approx(0.1) and s.factor(121.5) == pytest.approx(0.1)
    assert s.factor(122) == pytest.approx(0.01) and s.factor(163.9) == pytest.approx(0.01)


def test_warmup_then_cosine():
    s = LRSchedule("cosine", epochs=120, warmup_epochs=5, warmup_start_factor=0.0)
    assert s.factor(0) == 0.0
    assert s.factor(2.5) == pytest.approx(0.5)
    assert s.factor(5) == pytest.approx(1.0)
    assert s.factor(62.5) == pytest.approx(0.5)
    assert s.factor(5 + 115 / 4) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    assert s.factor(120) == pytest.approx(0.0, abs=1e-12)
    floor = LRSchedule("cosine", epochs=10, min_factor=0.01)
    assert floor.factor(10) == pytest.approx(0.01) and floor.factor(0) == 1.0


def test_warmup_into_multistep_and_constant():
    s = LRSchedule(
        "multistep", epochs=10, milestones=(5,), warmup_epochs=2, warmup_start_factor=0.1
    )
    assert s.factor(0) == pytest.approx(0.1) and s.factor(1) == pytest.approx(0.55)
    assert s.factor(2) == 1.0 and s.factor(5) == pytest.approx(0.1)
    assert LRSchedule("constant", epochs=3).factor(2.5) == 1.0


def test_invalid_schedules():
    with pytest.raises(ConfigError, match="one of"):
        LRSchedule("step", epochs=3)
    with pytest.raises(ConfigError, match="increasing"):
        LRSchedule("multistep", epochs=3, milestones=(2, 1))
    with pytest.raises(ConfigError, match="warmup_epochs"):
        LRSchedule("cosine", epochs=3, warmup_epochs=3)


def test_linear_scaling_with_batch_size():
    assert scaled_lr(OptimConfig(lr=0.1, lr_reference_batch=256), 1024) == pytest.approx(0.4)
    assert scaled_lr(OptimConfig(lr=0.1, lr_reference_batch=256), 32) == pytest.approx(0.0125)
    assert scaled_lr(OptimConfig(lr=0.1), 1024) == 0.1


def test_engine_sets_lr_every_step_and_scales_bin_gates(tiny_config):
    seen = []
    cfg = tiny_config(
        schedule={"name": "cosine", "warmup_epochs": 1, "milestones": []},
        optim={"lr": 0.2, "lr_reference_batch": 32},
    )
    train(cfg, builders=tiny_builders(), callbacks=[lambda info: seen.append(info)], log=None)
    steps = seen[0].steps_per_epoch
    peak = 0.2 * 16 / 32
    assert [round(i.lr, 9) for i in seen[:steps]] == [
        round(peak * k / steps, 9) for k in range(steps)
    ]
    assert seen[steps].lr == pytest.approx(peak)
    assert seen[-1].lr == pytest.approx(peak * (1 + math.cos(math.pi * (steps - 1) / steps)) / 2)
