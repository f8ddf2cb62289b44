"""The task interface: what differs between classification, style transfer, detection, ...

The engine (:mod:`normlab.train.engine`, :mod:`normlab.train.runner`) runs one loop for
every task: learning-rate schedule, AMP, NaN stops, gradient clipping, ``post_step``,
progress bar, checkpoints, resume, TensorBoard and ``torchrun``. A :class:`Task` supplies
the rest:

- **data**: :meth:`Task.build_loaders` returns a :class:`~normlab.train.factory.Loaders`
  (training loader, evaluation loader, what the model must know about the data);
- **model**: :meth:`Task.build_model`;
- **loss**: :meth:`Task.training_step` returns the loss to minimise and what the training
  metric needs; :meth:`Task.eval_step` returns what the evaluation metric needs;
- **metrics** with a cross-process reduction: a :class:`Metric` accumulates over this
  process's batches and :meth:`Metric.compute` reduces over processes. :class:`SumMetric`
  keeps torchmetrics-style *sum* states reduced with one
  :meth:`~normlab.train.parallel.Parallel.sum`; :class:`GatherMetric` collects per-sample
  predictions on every process and scores all of them once (COCO AP and other metrics that
  are not sums of per-batch counts);
- **what decides** ``best.pt`` (:attr:`Task.monitor`, :attr:`Task.mode`), what
  ``summary.json`` reports (:meth:`Task.summary`) and the epoch line (:meth:`Task.epoch_line`);
- **which config keys fix the network's shape** (:attr:`Task.architecture_keys`): a
  checkpoint from another architecture is refused with a one-line error naming the key.

Tasks register themselves with :func:`register_task` in :mod:`normlab.tasks`; the engine
finds them by the config's top-level ``task`` key through :func:`get_task` and never
imports a task module.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from normlab.train.config import Config, DataConfig, ModelConfig
from normlab.train.errors import ConfigError
from normlab.train.factory import Loaders
from normlab.train.parallel import Parallel

__all__ = [
    "Forward",
    "GatherMetric",
    "Metric",
    "StepResult",
    "SumMetric",
    "Task",
    "get_task",
    "list_tasks",
    "register_task",
]

Forward = Callable[[torch.Tensor], Any]
"""The model's forward pass as the engine runs it (compiled, DDP-wrapped, channels-last)."""


@dataclass(frozen=True)
class StepResult:
    """What one training step produced.

    Attributes:
        loss: The 0-d loss to minimise (with its graph). The engine checks it is finite
            on every process before any update.
        output: Whatever the training metric reads (e.g. logits), detached by the task.
    """

    loss: torch.Tensor
    output: Any = None


class Metric(ABC):
    """Accumulates over this process's batches; :meth:`compute` reduces over processes."""

    @abstractmethod
    def update(self, batch: Any, output: Any) -> None:
        """Add one batch (``output`` is the task step's)."""

    @abstractmethod
    def compute(self, parallel: Parallel) -> dict[str, float]:
        """The metrics of every process's batches together (the same on every process)."""


class SumMetric(Metric):
    """A metric whose states are sums over batches (torchmetrics' ``dist_reduce_fx="sum"``).

    Subclasses call :meth:`add` in :meth:`update` and turn the totals into numbers in
    :meth:`finish`. All states are reduced in one collective.

    Args:
        device: Device of the states (the batches').
        states: Name and dtype of each state, in a fixed order.
    """

    def __init__(self, device: torch.device, states: dict[str, torch.dtype]) -> None:
        self.states = {k: torch.zeros((), device=device, dtype=t) for k, t in states.items()}

    def add(self, **values: torch.Tensor | int | float) -> None:
        """Add to the named states in place."""
        for key, value in values.items():
            self.states[key] += value

    def compute(self, parallel: Parallel) -> dict[str, float]:
        totals = parallel.sum(*self.states.values())
        return self.finish(dict(zip(self.states, totals)))

    @abstractmethod
    def finish(self, totals: dict[str, torch.Tensor]) -> dict[str, float]:
        """The metrics from the states summed over processes."""


class GatherMetric(Metric):
    """A metric scored on all predictions at once (e.g. COCO AP, which is not a sum).

    Subclasses append picklable per-sample records to :attr:`records` in :meth:`update`
    and score the records of every process in :meth:`score`; with several processes the
    records are gathered with ``all_gather_object`` so every process returns the same.
    """

    def __init__(self) -> None:
        self.records: list[Any] = []

    def compute(self, parallel: Parallel) -> dict[str, float]:
        records = self.records
        if parallel.enabled:
            parts: list[Any] = [None] * parallel.world_size
            dist.all_gather_object(parts, records)
            records = [record for part in parts for record in part]
        return self.score(records)

    @abstractmethod
    def score(self, records: list[Any]) -> dict[str, float]:
        """The metrics of every process's records."""


class Task(ABC):
    """What a kind of training needs from its config; the engine does the rest.

    Attributes:
        name: Registry name (the config's ``task`` value).
        monitor: Evaluation key that decides ``best.pt``.
        mode: ``"max"`` or ``"min"``: whether a larger ``monitor`` is better.
        architecture_keys: Dotted config keys that fix the network's parameters; a
            checkpoint whose stored config differs in one of them is refused.
    """

    name: ClassVar[str] = ""
    monitor: ClassVar[str] = "test_loss"
    mode: ClassVar[str] = "min"
    architecture_keys: ClassVar[tuple[str, ...]] = (
        "task",
        "model.name",
        "model.norm",
        "model.num_classes",
        "model.in_chans",
        "model.kwargs",
    )

    @classmethod
    def from_config(cls, config: Config) -> Task:
        """The task for a run config (override to read task options from it)."""
        del config
        return cls()

    def build_loaders(self, data: DataConfig, *, seed: int, device: torch.device) -> Loaders:
        """Training and evaluation loaders of the ``data`` section.

        Raises:
            ConfigError: The task is not trained from a run config (the default).
        """
        del data, seed, device
        raise ConfigError(f"task {self.name!r} cannot be trained from a run config")

    def build_model(self, model: ModelConfig, *, num_classes: int, in_chans: int) -> nn.Module:
        """The network of the ``model`` section for data with these classes and channels.

        Raises:
            ConfigError: The task is not trained from a run config (the default).
        """
        del model, num_classes, in_chans
        raise ConfigError(f"task {self.name!r} cannot be trained from a run config")

    @abstractmethod
    def training_step(self, forward: Forward, batch: Any) -> StepResult:
        """The loss of one training batch (runs under the engine's autocast)."""

    @abstractmethod
    def train_metric(self, device: torch.device) -> Metric:
        """A fresh training metric; it sees ``(batch, StepResult)`` after every update."""

    @abstractmethod
    def eval_step(self, forward: Forward, batch: Any) -> Any:
        """What the evaluation metric needs from one batch (runs under ``no_grad``)."""

    @abstractmethod
    def eval_metric(self, loaders: Loaders, device: torch.device) -> Metric:
        """A fresh evaluation metric for ``loaders.test`` (and loaders like it)."""

    def is_better(self, value: float, best: float | None) -> bool:
        """Whether ``value`` of :attr:`monitor` beats ``best`` (``None``: nothing yet)."""
        if best is None or math.isnan(best):
            return not math.isnan(value)
        return value > best if self.mode == "max" else value < best

    def summary(self, row: dict[str, Any], best: float | None) -> dict[str, Any]:
        """Task-specific entries of ``summary.json`` from the last epoch row and the best
        value of :attr:`monitor` so far (``None`` before the first epoch)."""
        return {f"final_{self.monitor}": row.get(self.monitor), f"best_{self.monitor}": best}

    def epoch_line(self, row: dict[str, Any], epochs: int, best: float | None) -> str:
        """The line logged after each epoch."""
        values = "  ".join(
            f"{k} {v:.4g}" for k, v in row.items() if k not in ("epoch", "time_s")
            and isinstance(v, float)
        )
        return f"epoch {row['epoch']}/{epochs}  {values}  (best {best})  {row['time_s']:.1f}s"


TaskType = TypeVar("TaskType", bound=type[Task])
_TASKS: dict[str, type[Task]] = {}


def register_task(name: str) -> Callable[[TaskType], TaskType]:
    """Class decorator: register a :class:`Task` under ``name`` (the config's ``task``)."""

    def add(cls: TaskType) -> TaskType:
        if name in _TASKS and _TASKS[name] is not cls:
            raise ValueError(f"task {name!r} is already registered by {_TASKS[name].__name__}")
        cls.name = name
        _TASKS[name] = cls
        return cls

    return add


def get_task(name: str) -> type[Task]:
    """The task class registered under ``name``.

    Raises:
        ConfigError: No such task (the message lists the registered ones).
    """
    if name not in _TASKS:
        raise ConfigError(f"task {name!r} is not registered; choose from {', '.join(list_tasks())}")
    return _TASKS[name]


def list_tasks() -> list[str]:
    """Names of the registered tasks."""
    return sorted(_TASKS)
