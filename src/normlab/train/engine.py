"""The training loop of every task: epochs of steps, evaluation passes and divergence stops.

Every step: set the learning rate from the schedule; split the batch into
``accumulate_steps`` micro-batches (:meth:`~normlab.train.task.Task.split_batch`) and, for
each, run forward and loss through the task (under bfloat16 autocast on the training
device, CUDA or CPU, if asked) and backward with the loss weighted by the micro-batch's
share of the batch; check that the step's loss is finite on every process; optional
gradient-norm clipping, ``optimizer.step()``, then ``post_step(model)`` (e.g.
:func:`normlab.norms.post_step`, which clamps BIN gates to [0, 1]). A NaN or infinite loss
raises :class:`~normlab.train.errors.NonFiniteLossError` *before* the update.

**Gradient accumulation** gives the gradient of the whole batch (exactly, up to float
summation order, for a model whose output for a sample does not depend on the others: LN,
IN, GN). Batch-statistics norms (BN, IEBN, SN's BN part, BIN) compute their statistics
over each micro-batch instead, and update their running statistics once per micro-batch:
``k`` micro-batches of a batch ``B`` train like ``k`` GPUs with ``B / k`` samples each and
unsynced statistics -- the "(GPUs, samples per GPU)" axis of the SN paper's batch-size
study. Under ``DistributedDataParallel`` the gradients are all-reduced once per step
(``no_sync`` for all but the last micro-batch).

After an epoch (:meth:`Trainer.run_epoch`) the weights and every evaluated ``*_loss`` must
be finite too: a loss that blows up on an epoch's last step leaves non-finite weights or a
non-finite test loss behind, and that epoch counts as divergence (the caller keeps the
previous good checkpoint).

An epoch's row also holds ``images_per_s`` (images of every process per second of
training, evaluation excluded) and ``data_wait_s`` (seconds this process waited for its
training loader); the progress bar shows images/s. ``limit_batches`` trains and evaluates
only the first ``N`` batches of every epoch (a dry run).

An epoch can be interrupted and continued: every ``checkpoint_every`` steps the trainer
hands an :class:`EpochProgress` (the step, the training metric's totals, the throughput
counters) to its ``on_checkpoint`` callback, and :meth:`Trainer.train_epoch` continues from
one, with the training loader already at that position (:class:`~normlab.data.loader.EpochLoader`).

The loop knows nothing of the task: batches go to :meth:`~normlab.train.task.Task.training_step`
and :meth:`~normlab.train.task.Task.eval_step`, and the task's metrics reduce themselves
over processes. Loaders are iterables of batches on the training device with ``len()``;
``set_epoch(epoch)`` is called when the loader has it. With several processes
(:mod:`normlab.train.parallel`) each one trains on its share of every batch through
``DistributedDataParallel``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from normlab.train.errors import CheckpointError, NonFiniteLossError
from normlab.train.eval_stats import batch_average_stats
from normlab.train.factory import Loaders
from normlab.train.parallel import SINGLE, Parallel
from normlab.train.schedule import LRSchedule
from normlab.train.task import Forward, Metric, StepResult, Task

__all__ = [
    "EpochProgress",
    "StepInfo",
    "Trainer",
    "evaluate",
    "first_non_finite",
    "loader_position",
]


@dataclass(frozen=True)
class StepInfo:
    """What a step callback sees after each optimizer step.

    Attributes:
        epoch: Zero-based epoch.
        step: Zero-based step within the epoch.
        steps_per_epoch: Steps in this epoch.
        lr: Learning rate of the first parameter group for this step.
        loss: The step's loss as a 0-d tensor (detached; reading it synchronizes CUDA).
        output: The task's step output (e.g. logits, or a dict of loss terms), detached;
            with gradient accumulation, a tuple of the micro-batches' outputs.
    """

    epoch: int
    step: int
    steps_per_epoch: int
    lr: float
    loss: torch.Tensor
    output: Any = None


StepCallback = Callable[[StepInfo], None]


@dataclass(frozen=True)
class EpochProgress:
    """Where training stands inside an epoch: what a checkpoint inside the epoch holds.

    Attributes:
        epoch: Zero-based epoch.
        step: Optimizer steps done in it; the next batch is batch ``step`` of the epoch.
        metric: The training metric's state, every process's totals
            (:meth:`~normlab.train.task.Metric.state_dict`).
        images: Images trained on so far in the epoch, by every process together.
        data_wait_s: Seconds this process has waited for training batches in the epoch.
        train_time_s: Seconds of training so far in the epoch.
    """

    epoch: int
    step: int
    metric: dict[str, Any]
    images: int
    data_wait_s: float
    train_time_s: float

    def state_dict(self) -> dict[str, Any]:
        """Plain values and tensors, for a checkpoint."""
        return dataclasses.asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EpochProgress:
        """The progress saved by :meth:`state_dict`."""
        return cls(**state)


def _no_post_step(model: nn.Module) -> None:
    del model


def _autocast(enabled: bool, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if enabled:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _input_layout(forward: Callable[..., Any], channels_last: bool) -> Forward:
    """``forward`` fed a channels-last copy of a 4-d first input when ``channels_last``
    (other arguments, e.g. a detector's targets, pass through unchanged)."""
    if not channels_last:
        return forward

    def run(x: Any, *rest: Any) -> Any:
        if isinstance(x, torch.Tensor) and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return forward(x, *rest)

    return run


def _timed(batches: Iterator[Any], wait: list[float]) -> Iterator[Any]:
    """``batches``, adding the seconds spent waiting for each one to ``wait[0]``."""
    while True:
        start = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            return
        wait[0] += time.perf_counter() - start
        yield batch


def first_non_finite(model: nn.Module) -> str | None:
    """Name of the first floating parameter or buffer holding a NaN or infinity, or ``None``."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def loader_position(loader: Any) -> tuple[int, int] | None:
    """``(epoch, batch)`` of the next batch of a loader that keeps its position inside an
    epoch (:class:`~normlab.data.loader.EpochLoader`'s ``state_dict``), else ``None``."""
    state = loader.state_dict() if hasattr(loader, "state_dict") else None
    if not isinstance(state, dict) or "batch" not in state:
        return None
    return int(state["epoch"]), int(state["batch"])


def _rewind(loader: Any) -> None:
    """Move a loader left inside an epoch (a limited pass) back to that epoch's start."""
    position = loader_position(loader)
    if position is not None and position[1] != 0:
        loader.set_epoch(position[0])


class Trainer:
    """Runs training epochs and evaluations of one model for one task.

    Args:
        model: The network, already on ``device``.
        optimizer: Optimizer whose groups carry ``initial_lr`` (the schedule multiplies it).
        schedule: Learning-rate schedule in epochs.
        task: What a batch means: loss, metrics (:class:`~normlab.train.task.Task`).
        device: Training device.
        amp: ``"none"`` or ``"bf16"`` (bfloat16 autocast on ``device``, CUDA or CPU).
        channels_last: Feed channels-last inputs (CUDA only; the model is converted by the
            caller).
        compile: Run the forward pass through ``torch.compile``.
        grad_clip: Maximum global gradient norm, or ``None``.
        post_step: Called with the model after every optimizer step
            (:func:`normlab.norms.post_step`).
        callbacks: Called with a :class:`StepInfo` after every optimizer step.
        progress: Show a tqdm progress bar with ETA and images/s for each epoch.
        parallel: This process's place among the training processes; with more than one,
            training runs through ``DistributedDataParallel`` and loaders must yield this
            process's share of each batch.
        accumulate_steps: Micro-batches per optimizer step (see the module docstring).
        limit_batches: Train and evaluate at most this many batches per epoch.
        checkpoint_every: Call ``on_checkpoint`` every this many steps inside an epoch
            (not after its last step: the epoch's end is checkpointed by the caller).
        on_checkpoint: Receives the :class:`EpochProgress` (on every process).
        eval_stats_batches: Before every evaluation, re-estimate the norms' statistics as
            the batch average of this many training batches (``eval.statistics=
            batch_average``, :func:`~normlab.train.eval_stats.batch_average_stats`);
            ``None`` evaluates with the running statistics.
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
        accumulate_steps: int = 1,
        limit_batches: int | None = None,
        checkpoint_every: int | None = None,
        on_checkpoint: Callable[[EpochProgress], None] | None = None,
        eval_stats_batches: int | None = None,
    ) -> None:
        if amp not in ("none", "bf16"):
            raise ValueError(f"train.amp must be 'none' or 'bf16', got {amp!r}")
        if accumulate_steps < 1:
            raise ValueError(f"accumulate_steps must be >= 1, got {accumulate_steps}")
        self.model = model
        self.task = task
        self.parallel = parallel
        self.use_amp = amp == "bf16"
        self.channels_last = channels_last and device.type == "cuda"
        plain: Callable[..., Any] = torch.compile(model) if compile else model
        replicated: Callable[..., Any] = plain
        self.ddp: nn.parallel.DistributedDataParallel | None = None
        if parallel.enabled:
            self.ddp = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
            replicated = torch.compile(self.ddp) if compile else self.ddp
        self.forward = _input_layout(plain, self.channels_last)
        self.train_forward = _input_layout(replicated, self.channels_last)
        self.optimizer = optimizer
        self.schedule = schedule
        self.device = device
        self.grad_clip = grad_clip
        self.post_step = post_step
        self.callbacks = list(callbacks)
        self.progress = progress
        self.accumulate_steps = accumulate_steps
        self.limit_batches = limit_batches
        self.checkpoint_every = checkpoint_every
        self.on_checkpoint = on_checkpoint
        self.eval_stats_batches = eval_stats_batches
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])

    def set_lr(self, progress: float) -> float:
        """Set every group's lr to ``initial_lr * schedule.factor(progress)``; return group 0's."""
        factor = self.schedule.factor(progress)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        return float(self.optimizer.param_groups[0]["lr"])

    def steps(self, loader: Any) -> int:
        """Optimizer steps of an epoch of ``loader``: its length, or ``limit_batches``."""
        steps = len(loader)
        return steps if self.limit_batches is None else min(steps, self.limit_batches)

    def _bar(self, steps: int, start: int, desc: str) -> Any:
        if not self.progress:
            return None
        return tqdm(total=steps, initial=start, desc=desc, leave=False, dynamic_ncols=True,
                    unit="step")

    def _seek(self, loader: Any, epoch: int, start: int) -> None:
        """Put the training loader at batch ``start`` of ``epoch``.

        At an epoch's start that is ``set_epoch(epoch)``; inside an epoch the loader must
        already be there (restored from the checkpoint's loader state).

        Raises:
            CheckpointError: The loader is elsewhere, or cannot resume inside an epoch.
        """
        if start == 0:
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)
            return
        position = loader_position(loader)
        if position != (epoch, start):
            where = "has no position" if position is None else (
                f"is at batch {position[1]} of epoch {position[0] + 1}"
            )
            raise CheckpointError(
                f"the run continues at batch {start} of epoch {epoch + 1}, but its training "
                f"loader {where}; resume from a checkpoint taken at the end of an epoch"
            )

    def _sync(self, last: bool) -> contextlib.AbstractContextManager[Any]:
        """DDP's gradient all-reduce on the last micro-batch only."""
        if self.ddp is None or last:
            return contextlib.nullcontext()
        return self.ddp.no_sync()

    def _step(self, batch: Any, metric: Metric) -> tuple[torch.Tensor, Any]:
        """Forward and backward of one batch (its micro-batches); the step's loss and output."""
        self.optimizer.zero_grad(set_to_none=True)
        size = self.task.batch_size(batch)
        parts = [batch]
        if self.accumulate_steps > 1:
            parts = self.task.split_batch(batch, min(self.accumulate_steps, max(size, 1)))
        losses, outputs = [], []
        for index, part in enumerate(parts):
            with self._sync(index == len(parts) - 1):
                with _autocast(self.use_amp, self.device):
                    result = self.task.training_step(self.train_forward, part)
                loss = result.loss
                if len(parts) > 1:
                    loss = loss * (self.task.batch_size(part) / size)
                torch.autograd.backward(loss)
            metric.update(part, StepResult(result.loss.detach(), result.output))
            losses.append(loss.detach())
            outputs.append(result.output)
        if len(parts) == 1:
            return losses[0], outputs[0]
        return torch.stack(losses).sum(), tuple(outputs)

    def _global_images(self, images: int) -> int:
        (count,) = self.parallel.sum(torch.tensor(images, device=self.device))
        return int(count)

    def train_epoch(
        self, loader: Iterable[Any], epoch: int, resume: EpochProgress | None = None
    ) -> dict[str, float]:
        """Train one epoch (or its remaining steps).

        Args:
            loader: Training batches with ``len()``.
            epoch: Zero-based epoch (sets the schedule position and the loader's epoch).
            resume: Continue the epoch from this progress; the loader must be at batch
                ``resume.step`` of ``epoch``.

        Returns:
            ``lr`` (at the epoch's first step), the task's training metrics,
            ``images_per_s``, ``data_wait_s`` and the loader's counters (``bad_files``
            of a streaming loader).

        Raises:
            NonFiniteLossError: The loss became NaN or infinite; no update was applied.
            CheckpointError: ``resume`` does not match the loader's position.
        """
        steps = self.steps(loader)
        start = 0 if resume is None else resume.step
        self._seek(loader, epoch, start)
        self.model.train()
        metric = self.task.train_metric(self.device)
        images, wait, before = 0, [0.0], 0.0
        if resume is not None:
            metric.load_state_dict(resume.metric, self.parallel)
            images = resume.images if self.parallel.is_main else 0
            wait[0], before = resume.data_wait_s, resume.train_time_s
        first_lr = self.set_lr(float(epoch))
        bar = self._bar(steps, start, f"epoch {epoch + 1}")
        clock = time.perf_counter()
        batches = _timed(iter(loader), wait)
        for step, batch in zip(range(start, steps), batches):
            lr = self.set_lr(epoch + step / steps)
            value, output = self._step(batch, metric)
            if not self.parallel.all_true(torch.isfinite(value)):
                raise NonFiniteLossError(
                    f"training loss became {value.item()} at epoch {epoch + 1}, step "
                    f"{step + 1}/{steps}; the run stopped before applying that update. "
                    "Try a lower optim.lr, optim.grad_clip=1.0, or train.amp=none.",
                    epoch=epoch,
                    step=step,
                    value=value.item(),
                )
            if self.grad_clip is not None:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.optimizer.step()
            self.post_step(self.model)
            images += self.task.batch_size(batch)
            done = step + 1
            if self.on_checkpoint is not None and self.checkpoint_every and done < steps and (
                done % self.checkpoint_every == 0
            ):
                self.on_checkpoint(EpochProgress(
                    epoch, done, metric.state_dict(self.parallel), self._global_images(images),
                    wait[0], before + time.perf_counter() - clock,
                ))
            info = StepInfo(epoch, step, steps, lr, value, output)
            for callback in self.callbacks:
                callback(info)
            if bar is not None:
                bar.update(1)
                if step % 10 == 0:
                    rate = images * self.parallel.world_size / (time.perf_counter() - clock)
                    bar.set_postfix(loss=f"{value.item():.3f}", lr=f"{lr:.4g}",
                                    img_s=f"{rate:.0f}")
        if bar is not None:
            bar.close()
        seconds = before + time.perf_counter() - clock
        return {
            "lr": first_lr,
            **metric.compute(self.parallel),
            "images_per_s": self._global_images(images) / max(seconds, 1e-9),
            "data_wait_s": wait[0],
            **self._loader_counts(loader),
        }

    def _loader_counts(self, loader: Any) -> dict[str, int]:
        """The loader's own counters (``epoch_stats()``, e.g. the bad files a streaming
        loader skipped so far), summed over processes."""
        stats = loader.epoch_stats() if hasattr(loader, "epoch_stats") else {}
        if not stats:
            return {}
        totals = self.parallel.sum(*(torch.tensor(v, device=self.device) for v in stats.values()))
        return {key: int(total) for key, total in zip(stats, totals)}

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
            limit=self.limit_batches,
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

    def run_epoch(
        self,
        loaders: Loaders,
        epoch: int,
        *,
        evaluate: bool = True,
        resume: EpochProgress | None = None,
    ) -> dict[str, Any]:
        """Train epoch ``epoch`` (zero-based), or its remaining steps after ``resume``,
        evaluate on ``loaders.test`` when asked and check for divergence.

        Returns:
            The epoch's row: ``epoch`` (finished epochs), ``lr``, the training and
            evaluation metrics, the task's :meth:`~normlab.train.task.Task.epoch_record`,
            ``images_per_s``, ``data_wait_s``, ``eval_time_s`` and ``time_s`` (wall
            clock, the part before ``resume`` included).

        Raises:
            NonFiniteLossError: The training loss, an evaluation loss or the weights are
                not finite; the epoch must not be recorded.
        """
        start = time.perf_counter() - (0.0 if resume is None else resume.train_time_s)
        row: dict[str, Any] = {"epoch": epoch + 1}
        row.update(self.train_epoch(loaders.train, epoch, resume))
        if evaluate:
            if self.eval_stats_batches is not None:
                row["eval_stats_batches"] = batch_average_stats(
                    self.model, loaders.train, parallel=self.parallel,
                    num_batches=min(self.eval_stats_batches, self.steps(loaders.train)),
                )
            row.update(self.evaluate(loaders.test, self.task.eval_metric(loaders, self.device)))
        row.update(self.task.epoch_record(self.model))
        self.check_finite(row, epoch, self.steps(loaders.train))
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
    limit: int | None = None,
) -> dict[str, float]:
    """Evaluate a model in eval mode (running or batch-averaged norm statistics).

    A loader left inside an epoch (by an earlier limited pass) is rewound to the start of
    that epoch first, so every evaluation reads the same batches.

    Args:
        task: Turns a batch into what ``metric`` reads (:meth:`Task.eval_step`).
        model: The network (switched to eval mode).
        loader: Batches on the model's device.
        metric: A fresh metric of the task (:meth:`Task.eval_metric`).
        amp: ``"bf16"`` for bfloat16 autocast on the model's device (CUDA or CPU).
        channels_last: Feed channels-last inputs (CUDA only).
        forward: Callable used for the forward pass (e.g. the compiled model);
            default ``model``.
        parallel: With several processes, each evaluates its share of every batch and the
            metric reduces over processes, so every process returns the whole set's metrics.
        limit: Evaluate only the first ``limit`` batches; ``None``: all.

    Returns:
        The metric's values and ``eval_time_s``.
    """
    start = time.perf_counter()
    device = next(model.parameters(), torch.empty(0)).device
    run = _input_layout(model if forward is None else forward,
                        channels_last and device.type == "cuda")
    model.eval()
    _rewind(loader)
    for batch in itertools.islice(loader, limit):
        with _autocast(amp == "bf16", device):
            output = task.eval_step(run, batch)
        metric.update(batch, output)
    return {**metric.compute(parallel), "eval_time_s": time.perf_counter() - start}
