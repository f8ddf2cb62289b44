"""The training loop of every task: epochs of steps, evaluation passes and divergence stops.

Every step: set the learning rate from the schedule, forward and loss through the task
(bfloat16 autocast on CUDA if asked), check that the loss is finite on every process,
backward, optional gradient-norm clipping, ``optimizer.step()``, then ``post_step(model)``
(e.g. :func:`normlab.norms.post_step`, which clamps BIN gates to [0, 1]). A NaN or infinite
loss raises :class:`~normlab.train.errors.NonFiniteLossError` *before* the update.

After an epoch (:meth:`Trainer.run_epoch`) the weights and every evaluated ``*_loss`` must
be finite too: a loss that blows up on an epoch's last step leaves non-finite weights or a
non-finite test loss behind, and that epoch counts as divergence (the caller keeps the
previous good checkpoint).

The loop knows nothing of the task: batches go to :meth:`~normlab.train.task.Task.training_step`
and :meth:`~normlab.train.task.Task.eval_step`, and the task's metrics reduce themselves
over processes. Loaders are iterables of batches on the training device with ``len()``;
``set_epoch(epoch)`` is called when the loader has it. With several processes
(:mod:`normlab.train.parallel`) each one trains on its share of every batch through
``DistributedDataParallel``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from normlab.train.errors import NonFiniteLossError
from normlab.train.factory import Loaders
from normlab.train.parallel import SINGLE, Parallel
from normlab.train.schedule import LRSchedule
from normlab.train.task import Forward, Metric, StepResult, Task

__all__ = ["StepInfo", "Trainer", "evaluate", "first_non_finite"]


@dataclass(frozen=True)
class StepInfo:
    """What a step callback sees after each optimizer step.

    Attributes:
        epoch: Zero-based epoch.
        step: Zero-based step within the epoch.
        steps_per_epoch: Steps in this epoch.
        lr: Learning rate of the first parameter group for this step.
        loss: The step's loss as a 0-d tensor (detached; reading it synchronizes CUDA).
        output: The task's step output (e.g. logits, or a dict of loss terms), detached.
    """

    epoch: int
    step: int
    steps_per_epoch: int
    lr: float
    loss: torch.Tensor
    output: Any = None


StepCallback = Callable[[StepInfo], None]


def _no_post_step(model: nn.Module) -> None:
    del model


def _autocast(enabled: bool) -> contextlib.AbstractContextManager[Any]:
    if enabled:
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _input_layout(forward: Callable[..., Any], channels_last: bool) -> Forward:
    """``forward`` fed channels-last copies of 4-d inputs when ``channels_last``."""
    if not channels_last:
        return forward

    def run(x: torch.Tensor) -> Any:
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return forward(x)

    return run


def first_non_finite(model: nn.Module) -> str | None:
    """Name of the first floating parameter or buffer holding a NaN or infinity, or ``None``."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


class Trainer:
    """Runs training epochs and evaluations of one model for one task.

    Args:
        model: The network, already on ``device``.
        optimizer: Optimizer whose groups carry ``initial_lr`` (the schedule multiplies it).
        schedule: Learning-rate schedule in epochs.
        task: What a batch means: loss, metrics (:class:`~normlab.train.task.Task`).
        device: Training device.
        amp: ``"none"`` or ``"bf16"``; bfloat16 autocast is used on CUDA only.
        channels_last: Feed channels-last inputs (CUDA only; the model is converted by the
            caller).
        compile: Run the forward pass through ``torch.compile``.
        grad_clip: Maximum global gradient norm, or ``None``.
        post_step: Called with the model after every optimizer step
            (:func:`normlab.norms.post_step`).
        callbacks: Called with a :class:`StepInfo` after every optimizer step.
        progress: Show a tqdm progress bar with ETA and throughput for each epoch.
        parallel: This process's place among the training processes; with more than one,
            training runs through ``DistributedDataParallel`` and loaders must yield this
            process's share of each batch.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: LRSchedule,
        *,
        task: Task,
        device: torch.device,
        amp: str = "none",
        channels_last: bool = False,
        compile: bool = False,
        grad_clip: float | None = None,
        post_step: Callable[[nn.Module], None] = _no_post_step,
        callbacks: Sequence[StepCallback] = (),
        progress: bool = True,
        parallel: Parallel = SINGLE,
    ) -> None:
        if amp not in ("none", "bf16"):
            raise ValueError(f"train.amp must be 'none' or 'bf16', got {amp!r}")
        self.model = model
        self.task = task
        self.parallel = parallel
        self.use_amp = amp == "bf16" and device.type == "cuda"
        self.channels_last = channels_last and device.type == "cuda"
        plain: Callable[..., Any] = torch.compile(model) if compile else model
        replicated: Callable[..., Any] = plain
        if parallel.enabled:
            ddp = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
            replicated = torch.compile(ddp) if compile else ddp
        self.forward = _input_layout(plain, self.channels_last)
        self.train_forward = _input_layout(replicated, self.channels_last)
        self.optimizer = optimizer
        self.schedule = schedule
        self.device = device
        self.grad_clip = grad_clip
        self.post_step = post_step
        self.callbacks = list(callbacks)
        self.progress = progress
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])

    def set_lr(self, progress: float) -> float:
        """Set every group's lr to ``initial_lr * schedule.factor(progress)``; return group 0's."""
        factor = self.schedule.factor(progress)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        return float(self.optimizer.param_groups[0]["lr"])

    def _bar(self, loader: Iterable[Any], total: int, desc: str) -> Any:
        """``loader`` itself, or wrapped in a progress bar (ETA and steps/s) when asked.

        The plain ``tqdm`` class, not ``tqdm.auto``: the latter calls ``iter(loader)`` once
        more on construction, which advances an epoch-counting loader.
        """
        if not self.progress:
            return loader
        return tqdm(loader, total=total, desc=desc, leave=False, dynamic_ncols=True, unit="step")

    def train_epoch(self, loader: Iterable[Any], epoch: int) -> dict[str, float]:
        """Train one epoch.

        Args:
            loader: Training batches with ``len()``.
            epoch: Zero-based epoch (sets the schedule position and the loader's epoch).

        Returns:
            ``lr`` (at the epoch's first step) and the task's training metrics.

        Raises:
            NonFiniteLossError: The loss became NaN or infinite; no update was applied.
        """
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        steps = len(loader)  # type: ignore[arg-type]
        self.model.train()
        metric = self.task.train_metric(self.device)
        first_lr = self.set_lr(float(epoch))
        bar = self._bar(loader, steps, f"epoch {epoch + 1}")
        for step, batch in enumerate(bar):
            lr = self.set_lr(epoch + step / steps)
            with _autocast(self.use_amp):
                result = self.task.training_step(self.train_forward, batch)
            value = result.loss.detach()
            if not self.parallel.all_true(torch.isfinite(value)):
                raise NonFiniteLossError(
                    f"training loss became {value.item()} at epoch {epoch + 1}, step "
                    f"{step + 1}/{steps}; the run stopped before applying that update. "
                    "Try a lower optim.lr, optim.grad_clip=1.0, or train.amp=none.",
                    epoch=epoch,
                    step=step,
                    value=value.item(),
                )
            self.optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(result.loss)
            if self.grad_clip is not None:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.optimizer.step()
            self.post_step(self.model)
            metric.update(batch, StepResult(value, result.output))
            info = StepInfo(epoch, step, steps, lr, value, result.output)
            for callback in self.callbacks:
                callback(info)
            if self.progress and step % 10 == 0:
                bar.set_postfix(loss=f"{value.item():.3f}", lr=f"{lr:.4g}")
        return {"lr": first_lr, **metric.compute(self.parallel)}

    def evaluate(self, loader: Iterable[Any], metric: Metric) -> dict[str, float]:
        """Evaluate the model on ``loader`` into ``metric`` (see :func:`evaluate`)."""
        return evaluate(
            self.task,
            self.model,
            loader,
            metric,
            amp="bf16" if self.use_amp else "none",
            forward=self.forward,
            parallel=self.parallel,
        )

    def check_finite(self, row: dict[str, Any], epoch: int, steps: int) -> None:
        """Raise if the weights or any ``*_loss`` of an epoch's row are not finite.

        Raises:
            NonFiniteLossError: Divergence that the per-step check could not see (a loss
                that blew up on the epoch's last update shows only in the weights or the
                evaluation).
        """
        losses = [(k, v) for k, v in row.items() if k.endswith("loss") and not math.isfinite(v)]
        broken = first_non_finite(self.model)
        diverged = bool(losses) or broken is not None
        if not self.parallel.all_true(torch.tensor(not diverged, device=self.device)):
            key, value = losses[0] if losses else ("weights", math.nan)
            what = f"{key} became {value}" if losses else (
                f"the weights became non-finite ({broken or 'on another process'})"
            )
            raise NonFiniteLossError(
                f"{what} after epoch {epoch + 1}; that epoch is not kept. Try a lower "
                "optim.lr, optim.grad_clip=1.0, or train.amp=none.",
                epoch=epoch,
                step=max(steps - 1, 0),
                value=value,
            )

    def run_epoch(self, loaders: Loaders, epoch: int, *, evaluate: bool = True) -> dict[str, Any]:
        """Train epoch ``epoch`` (zero-based), evaluate on ``loaders.test`` when asked and
        check for divergence.

        Returns:
            The epoch's row: ``epoch`` (finished epochs), ``lr``, the training and
            evaluation metrics, ``eval_time_s`` and ``time_s`` (wall clock).

        Raises:
            NonFiniteLossError: The training loss, an evaluation loss or the weights are
                not finite; the epoch must not be recorded.
        """
        start = time.perf_counter()
        row: dict[str, Any] = {"epoch": epoch + 1}
        row.update(self.train_epoch(loaders.train, epoch))
        if evaluate:
            row.update(self.evaluate(loaders.test, self.task.eval_metric(loaders, self.device)))
        self.check_finite(row, epoch, len(loaders.train))
        row["time_s"] = time.perf_counter() - start
        return row


@torch.no_grad()
def evaluate(
    task: Task,
    model: nn.Module,
    loader: Iterable[Any],
    metric: Metric,
    *,
    amp: str = "none",
    channels_last: bool = False,
    forward: Forward | None = None,
    parallel: Parallel = SINGLE,
) -> dict[str, float]:
    """Evaluate a model in eval mode (running or batch-averaged norm statistics).

    Args:
        task: Turns a batch into what ``metric`` reads (:meth:`Task.eval_step`).
        model: The network (switched to eval mode).
        loader: Batches on the model's device.
        metric: A fresh metric of the task (:meth:`Task.eval_metric`).
        amp: ``"bf16"`` for bfloat16 autocast on CUDA; a no-op elsewhere.
        channels_last: Feed channels-last inputs (CUDA only).
        forward: Callable used for the forward pass (e.g. the compiled model);
            default ``model``.
        parallel: With several processes, each evaluates its share of every batch and the
            metric reduces over processes, so every process returns the whole set's metrics.

    Returns:
        The metric's values and ``eval_time_s``.
    """
    start = time.perf_counter()
    device = next(model.parameters(), torch.empty(0)).device
    run = _input_layout(model if forward is None else forward,
                        channels_last and device.type == "cuda")
    model.eval()
    for batch in loader:
        with _autocast(amp == "bf16" and device.type == "cuda"):
            output = task.eval_step(run, batch)
        metric.update(batch, output)
    return {**metric.compute(parallel), "eval_time_s": time.perf_counter() - start}
