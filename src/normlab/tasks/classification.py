"""Image classification: cross-entropy training, top-1/top-5 evaluation, best by test accuracy.

The data and model come from the config through :mod:`normlab.train.factory` (the
``normlab.data`` readers, ``data.mix`` included, and the ``normlab.models`` registry). A
mixed-data run (``data.mix``, IEBN Table 3) scores its test split on the primary classes
only: loss, top-1 and top-5 all use those columns of the logits.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from normlab.data import primary_logits
from normlab.train.config import Config, DataConfig, ModelConfig
from normlab.train.engine import evaluate
from normlab.train.factory import Loaders, build_loaders, build_model
from normlab.train.parallel import SINGLE, Parallel
from normlab.train.task import Forward, StepResult, SumMetric, Task, register_task

__all__ = [
    "AccuracyMetric",
    "ClassificationTask",
    "PerSampleMetric",
    "TrainAccuracy",
    "evaluate_classifier",
]


class PerSampleMetric(SumMetric):
    """Sum states divided by the number of samples seen (``seen``, always a state).

    Args:
        device: Device of the states.
        split: ``"training"`` or ``"evaluation"``, for the empty-loader error.
        outputs: Output key -> ``(state, scale)``: the output is ``scale * state / seen``.
        states: The other states and their dtypes.
    """

    def __init__(
        self,
        device: torch.device,
        split: str,
        outputs: dict[str, tuple[str, float]],
        states: dict[str, torch.dtype],
    ) -> None:
        super().__init__(device, {**states, "seen": torch.int64})
        self.split, self.outputs = split, outputs

    def finish(self, totals: dict[str, torch.Tensor]) -> dict[str, float]:
        seen = totals["seen"].item()
        if seen == 0:
            raise ValueError(f"the {self.split} loader yielded no batches")
        return {
            key: scale * totals[state].item() / seen for key, (state, scale) in self.outputs.items()
        }


class TrainAccuracy(PerSampleMetric):
    """``train_loss`` (mean of the per-batch losses, weighted by batch size) and
    ``train_acc`` (percent, running over the epoch in train mode)."""

    def __init__(self, device: torch.device) -> None:
        super().__init__(
            device,
            "training",
            {"train_loss": ("loss_sum", 1.0), "train_acc": ("correct", 100.0)},
            {"loss_sum": torch.float64, "correct": torch.int64},
        )

    def update(self, batch: Any, output: Any) -> None:
        _, y = batch
        self.add(
            loss_sum=output.loss * y.shape[0],  # the engine passes the loss detached
            correct=(output.output.argmax(1) == y).sum(),
            seen=y.shape[0],
        )


class AccuracyMetric(PerSampleMetric):
    """``test_loss`` (mean cross-entropy), ``test_acc`` and ``test_acc5`` (top-1/top-5, %).

    Args:
        device: Device of the batches.
        classes: Score only the first ``classes`` logits (the primary classes of a
            mixed-data run); ``None`` scores all.
    """

    def __init__(self, device: torch.device, classes: int | None = None) -> None:
        super().__init__(
            device,
            "evaluation",
            {
                "test_loss": ("loss_sum", 1.0),
                "test_acc": ("top1", 100.0),
                "test_acc5": ("top5", 100.0),
            },
            {"loss_sum": torch.float64, "top1": torch.int64, "top5": torch.int64},
        )
        self.classes = classes

    def update(self, batch: Any, output: Any) -> None:
        _, y = batch
        logits = output if self.classes is None else primary_logits(output, self.classes)
        k = min(5, logits.shape[1])
        hits = logits.topk(k, dim=1).indices == y[:, None]
        self.add(
            loss_sum=F.cross_entropy(logits, y, reduction="sum"),
            top1=hits[:, 0].sum(),
            top5=hits.any(dim=1).sum(),
            seen=y.shape[0],
        )


@register_task("classification")
class ClassificationTask(Task):
    """Cross-entropy classification of ``(x, y)`` batches (the default task).

    Args:
        label_smoothing: Cross-entropy label smoothing of the training loss.
    """

    monitor = "test_acc"
    mode = "max"

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = label_smoothing

    @classmethod
    def from_config(cls, config: Config) -> ClassificationTask:
        return cls(label_smoothing=config.train.label_smoothing)

    def build_loaders(self, data: DataConfig, *, seed: int, device: torch.device) -> Loaders:
        return build_loaders(data, seed=seed, device=device)

    def build_model(self, model: ModelConfig, *, num_classes: int, in_chans: int) -> nn.Module:
        return build_model(model, num_classes=num_classes, in_chans=in_chans)

    def training_step(self, forward: Forward, batch: Any) -> StepResult:
        x, y = batch
        logits = forward(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
        return StepResult(loss, logits.detach())

    def train_metric(self, device: torch.device) -> TrainAccuracy:
        return TrainAccuracy(device)

    def eval_step(self, forward: Forward, batch: Any) -> torch.Tensor:
        logits: torch.Tensor = forward(batch[0])
        return logits.float()

    def eval_metric(self, loaders: Loaders, device: torch.device) -> AccuracyMetric:
        return AccuracyMetric(device, loaders.test_classes)

    def summary(self, row: dict[str, Any], best: float | None) -> dict[str, Any]:
        return {
            "final_acc": row.get("test_acc"),
            "final_acc5": row.get("test_acc5"),
            "final_train_loss": row.get("train_loss"),
            "best_acc": best,
        }

    def epoch_line(self, row: dict[str, Any], epochs: int, best: float | None) -> str:
        return (
            f"epoch {row['epoch']}/{epochs}  lr {row['lr']:.4g}  "
            f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.2f}  |  "
            f"test loss {row['test_loss']:.4f} acc {row['test_acc']:.2f} (best {best:.2f})  "
            f"{row['time_s']:.1f}s"
        )


def evaluate_classifier(
    model: nn.Module,
    loader: Any,
    *,
    device: torch.device,
    amp: str = "none",
    channels_last: bool = False,
    forward: Forward | None = None,
    classes: int | None = None,
    parallel: Parallel = SINGLE,
) -> dict[str, float]:
    """Evaluate a classifier in eval mode on ``(x, y)`` batches (the engine's evaluation).

    Args:
        model: The network (switched to eval mode).
        loader: Batches ``(x, y)`` on ``device``.
        device: Device of the batches.
        amp: ``"bf16"`` for bfloat16 autocast on CUDA; a no-op elsewhere.
        channels_last: Feed channels-last inputs (CUDA only).
        forward: Callable used for the forward pass (e.g. the compiled model);
            default ``model``.
        classes: Score only the first ``classes`` outputs, as a classifier over those
            classes (the primary classes of a mixed-data run); ``None`` scores all outputs.
        parallel: With several processes, each evaluates its share of every batch and the
            counts are summed, so every process returns the whole test set's metrics.

    Returns:
        ``test_loss``, ``test_acc`` and ``test_acc5`` (top-1/top-5, percent) and
        ``eval_time_s``.
    """
    return evaluate(ClassificationTask(), model, loader, AccuracyMetric(device, classes),
                    amp=amp, channels_last=channels_last, forward=forward, parallel=parallel)
