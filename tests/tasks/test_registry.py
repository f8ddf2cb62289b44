"""The task interface: the registry, and a task the engine has never seen trained by it.

The toy task scores its evaluation with a :class:`GatherMetric` (a median, which is not a
sum of per-batch counts, like COCO AP), minimises its monitor, and reports its own summary
keys: none of that needs a change to the loop.
"""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normlab.tasks import ClassificationTask
from normlab.train import (
    ConfigError,
    config_from_dict,
    config_to_dict,
    load_checkpoint,
    resume,
    train,
)
from normlab.train.evaluation import evaluate_run
from normlab.train.factory import Loaders
from normlab.train.task import (
    GatherMetric,
    StepResult,
    SumMetric,
    Task,
    get_task,
    list_tasks,
    register_task,
)

from ..train.tiny import one_thread

__all__ = ["one_thread"]


class Batches:
    """A fixed list of ``(x, y)`` batches with ``len()``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, size: int) -> None:
        self.batches = [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


class MeanLoss(SumMetric):
    def __init__(self, device: torch.device) -> None:
        super().__init__(device, {"sum": torch.float64, "steps": torch.int64})

    def update(self, batch: Any, output: Any) -> None:
        self.add(sum=output.loss, steps=1)

    def finish(self, totals: dict[str, torch.Tensor]) -> dict[str, float]:
        return {"train_loss": totals["sum"].item() / totals["steps"].item()}


class MedianError(GatherMetric):
    def update(self, batch: Any, output: Any) -> None:
        self.records += (output - batch[1]).abs().tolist()

    def score(self, records: list[Any]) -> dict[str, float]:
        return {"test_median_err": statistics.median(records)}


@register_task("toy_regression")
class ToyRegression(Task):
    monitor = "test_median_err"
    mode = "min"

    def build_loaders(self, data, *, seed, device):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(96, 3, 4, 4, generator=g)
        y = 3 * x.mean((1, 2, 3))
        return Loaders(Batches(x[:64], y[:64], 16), Batches(x[64:], y[64:], 8), 1, 3)

    def build_model(self, model, *, num_classes, in_chans):
        return nn.Sequential(nn.Flatten(), nn.Linear(in_chans * 16, num_classes))

    def training_step(self, forward, batch):
        x, y = batch
        return StepResult(F.mse_loss(forward(x).squeeze(1), y))

    def train_metric(self, device):
        return MeanLoss(device)

    def eval_step(self, forward, batch):
        return forward(batch[0]).squeeze(1)

    def eval_metric(self, loaders, device):
        return MedianError()


def _config(tmp_path: Path, **train_section: Any):
    return config_from_dict({
        "task": "toy_regression",
        "optim": {"lr": 0.05, "weight_decay": 0.0},
        "schedule": {"name": "constant"},
        "train": {"epochs": 4, "device": "cpu", "seed": 1, **train_section},
        "run": {"out_dir": str(tmp_path / "runs"), "name": "toy", "progress": False},
    })


def test_registry_lists_the_tasks_and_refuses_unknown_names():
    assert {"classification", "style_transfer", "toy_regression"} <= set(list_tasks())
    assert get_task("toy_regression") is ToyRegression
    with pytest.raises(ConfigError, match="task .segmentation. is not registered; choose from "
                       "classification, detection, style_transfer"):
        get_task("segmentation")

    class Other(ToyRegression):
        pass

    with pytest.raises(ValueError, match="already registered by ToyRegression"):
        register_task("toy_regression")(Other)


def test_a_new_task_trains_on_the_engine_without_changing_the_loop(tmp_path):
    lines = []
    summary = train(_config(tmp_path), log=lines.append)
    folder = tmp_path / "runs" / "toy"
    rows = [json.loads(r) for r in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    errors = [r["test_median_err"] for r in rows]
    best = min(range(4), key=lambda i: errors[i])
    assert summary["best_epoch"] == best + 1 and summary["task"] == "toy_regression"
    assert summary["best_test_median_err"] == errors[best]
    assert summary["final_test_median_err"] == errors[-1]
    assert load_checkpoint(folder / "best.pt")["epoch"] == best + 1
    assert len(lines) == 4 and lines[0].startswith("epoch 1/4  lr 0.05  train_loss ")
    # the gathered metric equals the plain formula on the final model
    model = ToyRegression().build_model(None, num_classes=1, in_chans=3)
    model.load_state_dict(load_checkpoint(folder / "last.pt")["model"])
    loaders = ToyRegression().build_loaders(None, seed=1, device=torch.device("cpu"))
    with torch.no_grad():
        residuals = [(model(x).squeeze(1) - y).abs() for x, y in loaders.test]
    assert errors[-1] == pytest.approx(statistics.median(torch.cat(residuals).tolist()))


def test_a_new_task_resumes_exactly(tmp_path):
    train(_config(tmp_path), log=None)
    half = replace(_config(tmp_path, epochs=2), run=replace(_config(tmp_path).run, name="half"))
    train(half, log=None)
    resume(tmp_path / "runs" / "half", overrides=["train.epochs=4"], log=None)
    a = load_checkpoint(tmp_path / "runs/toy/last.pt")["model"]
    b = load_checkpoint(tmp_path / "runs/half/last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_task_that_cannot_re_estimate_statistics_refuses_batch_average(tmp_path):
    class NoRecompute(ToyRegression):
        batch_average_stats = False

    register_task("toy_no_recompute")(NoRecompute)
    message = ("{}: task 'toy_no_recompute' cannot re-estimate norm statistics from training "
               "batches")
    raw = config_to_dict(_config(tmp_path))
    raw["task"] = "toy_no_recompute"
    raw["train"]["epochs"] = 1
    with pytest.raises(ConfigError, match=re.escape(message.format(
            "eval.statistics=batch_average"))):
        train(config_from_dict({**raw, "eval": {"statistics": "batch_average"}}), progress=False)
    assert not (tmp_path / "runs" / "toy").exists()
    summary = train(config_from_dict(raw), progress=False)
    with pytest.raises(ConfigError, match=re.escape(message.format("--recompute-stats"))):
        evaluate_run(summary["run_dir"], recompute_stats=2)
    ClassificationTask().check_batch_average("anything")  # classification can
