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
- **what the model's state adds to each epoch's row** (:meth:`Task.epoch_record`, e.g.
  learned SN ratios over training);
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
from normlab.train.parallel import SINGLE, Parallel

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

Forward = Callable[..., Any]
"""The model's forward pass as the engine runs it (compiled, DDP-wrapped, channels-last):
called with the model's inputs (a batch tensor; a detector's images and targets)."""


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
    """Accumulates over this process's batches; :meth:`compute` reduces over processes.

    A training metric saved inside an epoch (``run.checkpoint_every``) also implements
    :meth:`state_dict` and :meth:`load_state_dict`.
    """

    @abstractmethod
    def update(self, batch: Any, output: Any) -> None:
        """Add one batch (``output`` is the task step's)."""

    @abstractmethod
    def compute(self, parallel: Parallel) -> dict[str, float]:
        """The metrics of every process's batches together (the same on every process)."""

    def state_dict(self, parallel: Parallel = SINGLE) -> dict[str, Any]:
        """What every process has accumulated so far, for a checkpoint inside an epoch
        (a collective: every process calls it).

        Raises:
            NotImplementedError: The metric cannot be saved (the default).
        """
        del parallel
        raise NotImplementedError(
            f"{type(self).__name__} cannot save its state inside an epoch; set "
            "run.checkpoint_every=null"
        )

    def load_state_dict(self, state: dict[str, Any], parallel: Parallel = SINGLE) -> None:
        """Continue from :meth:`state_dict`'s result: the main process takes the saved
        totals of every process, the others start empty, so :meth:`compute` counts every
        batch once."""
        del state, parallel
        raise NotImplementedError(f"{type(self).__name__} cannot load a state")


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

    def state_dict(self, parallel: Parallel = SINGLE) -> dict[str, Any]:
        totals = parallel.sum(*self.states.values())
        return {key: total.detach().clone() for key, total in zip(self.states, totals)}

    def load_state_dict(self, state: dict[str, Any], parallel: Parallel = SINGLE) -> None:
        if set(state) != set(self.states):
            raise ValueError(
                f"metric state has {sorted(state)}, {type(self).__name__} keeps "
                f"{sorted(self.states)}"
            )
        for key, value in self.states.items():
            value.copy_(state[key] if parallel.is_main else torch.zeros_like(value))

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

    def _all_records(self, parallel: Parallel) -> list[Any]:
        if not parallel.enabled:
            return self.records
        parts: list[Any] = [None] * parallel.world_size
        dist.all_gather_object(parts, self.records)
        return [record for part in parts for record in part]

    def compute(self, parallel: Parallel) -> dict[str, float]:
        return self.score(self._all_records(parallel))

    def state_dict(self, parallel: Parallel = SINGLE) -> dict[str, Any]:
        """Every process's records (they must be plain values and tensors to be saved in
        a checkpoint, which loads with ``weights_only=True``)."""
        return {"records": list(self._all_records(parallel))}

    def load_state_dict(self, state: dict[str, Any], parallel: Parallel = SINGLE) -> None:
        self.records = list(state["records"]) if parallel.is_main else []

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
        batch_average_stats: Whether the norms' statistics can be re-estimated by running
            the model in training mode on the first item of training batches (SN's
            batch-average inference: ``eval.statistics=batch_average``, ``normlab eval
            --recompute-stats``); a detector, which needs its targets in training mode,
            cannot.
    """

    name: ClassVar[str] = ""
    monitor: ClassVar[str] = "test_loss"
    mode: ClassVar[str] = "min"
    batch_average_stats: ClassVar[bool] = True
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

    def check_batch_average(self, what: str) -> None:
        """Refuse batch-average statistics (``what`` names the setting) for a task that
        cannot re-estimate them (:attr:`batch_average_stats`).

        Raises:
            ConfigError: The task cannot.
        """
        if not self.batch_average_stats:
            raise ConfigError(
                f"{what}: task {self.name!r} cannot re-estimate norm statistics from training "
                "batches (its model needs more than images in training mode); evaluate with "
                "the moving averages (eval.statistics=moving_average)"
            )

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
        """The loss of one training batch (runs under the engine's autocast).

        With gradient accumulation the batch is a micro-batch (:meth:`split_batch`); the
        loss should be its mean over samples, which the engine weights by the micro-batch's
        share of the batch.
        """

    def batch_size(self, batch: Any) -> int:
        """Number of samples in ``batch``: the first axis of its first tensor (a tensor, or
        the first tensor of a tuple, list or dict); for throughput and micro-batch weights."""
        tensor = _first_tensor(batch)
        if tensor is None:
            raise TypeError(
                f"cannot tell the size of a {type(batch).__name__} batch; override "
                f"{type(self).__name__}.batch_size"
            )
        return int(tensor.shape[0])

    def split_batch(self, batch: Any, parts: int) -> list[Any]:
        """``batch`` split into ``parts`` micro-batches along the first axis
        (``torch.tensor_split`` of a tensor, or of every tensor of a tuple or list, other
        items repeated), for gradient accumulation (``train.accumulate_steps``).

        Raises:
            TypeError: The batch is neither a tensor nor a tuple or list (override this).
        """
        if isinstance(batch, torch.Tensor):
            return list(batch.tensor_split(parts))
        if not isinstance(batch, (tuple, list)):
            raise TypeError(
                f"cannot split a {type(batch).__name__} batch into micro-batches; override "
                f"{type(self).__name__}.split_batch"
            )
        columns = [
            item.tensor_split(parts) if isinstance(item, torch.Tensor) else [item] * parts
            for item in batch
        ]
        return [list(row) if isinstance(batch, list) else tuple(row) for row in zip(*columns)]

    @abstractmethod
    def train_metric(self, device: torch.device) -> Metric:
        """A fresh training metric; it sees ``(batch, StepResult)`` after every update."""

    @abstractmethod
    def eval_step(self, forward: Forward, batch: Any) -> Any:
        """What the evaluation metric needs from one batch (runs under ``no_grad``)."""

    @abstractmethod
    def eval_metric(self, loaders: Loaders, device: torch.device) -> Metric:
        """A fresh evaluation metric for ``loaders.test`` (and loaders like it)."""

    def epoch_record(self, model: nn.Module) -> dict[str, Any]:
        """Entries of the model's state added to every epoch's metrics row after evaluation
        (plain JSON values: numbers, lists, dicts), e.g. a detector's SN importance ratios
        per component; default none."""
        del model
        return {}

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


def _first_tensor(batch: Any) -> torch.Tensor | None:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, dict):
        batch = list(batch.values())
    if isinstance(batch, (tuple, list)):
        for item in batch:
            tensor = _first_tensor(item)
            if tensor is not None:
                return tensor
    return None


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
