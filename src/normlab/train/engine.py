"""The training loop: one epoch of SGD steps and one evaluation pass.

Every step: set the learning rate from the schedule, forward (bfloat16 autocast on CUDA if
asked), check that the loss is finite, backward, optional gradient-norm clipping,
``optimizer.step()``, then ``normlab.post_step(model)`` (e.g. clamps BIN gates to [0, 1]).
A NaN or infinite loss raises :class:`~normlab.train.errors.NonFiniteLossError` *before*
the update, so neither the weights in memory nor any checkpoint on disk see it.

The loop is data-agnostic: loaders are iterables of ``(x, y)`` batches on the training
device with ``len()``; ``set_epoch(epoch)`` is called when the loader has it. With several
processes (:mod:`normlab.train.parallel`) each one trains on its share of every batch
through ``DistributedDataParallel``, and the epoch's counts are summed over processes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from normlab.train.errors import NonFiniteLossError
from normlab.train.parallel import SINGLE, Parallel
from normlab.train.schedule import LRSchedule

__all__ = ["StepInfo", "Trainer", "evaluate"]


@dataclass(frozen=True)
class StepInfo:
    """What a step callback sees after each optimizer step.

    Attributes:
        epoch: Zero-based epoch.
        step: Zero-based step within the epoch.
        steps_per_epoch: Steps in this epoch.
        lr: Learning rate of the first parameter group for this step.
        loss: The step's loss as a 0-d tensor (detached; reading it synchronizes CUDA).
    """

    epoch: int
    step: int
    steps_per_epoch: int
    lr: float
    loss: torch.Tensor


StepCallback = Callable[[StepInfo], None]


def _no_post_step(model: nn.Module) -> None:
    del model


def _autocast(enabled: bool) -> contextlib.AbstractContextManager[Any]:
    if enabled:
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _as_input(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    if channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


class Trainer:
    """Runs training epochs and evaluations of one model.

    Args:
        model: The network, already on ``device``.
        optimizer: Optimizer whose groups carry ``initial_lr`` (the schedule multiplies it).
        schedule: Learning-rate schedule in epochs.
        device: Training device.
        amp: ``"none"`` or ``"bf16"``; bfloat16 autocast is used on CUDA only.
        channels_last: Feed channels-last inputs (CUDA only; the model is converted by the
            caller).
        compile: Run the forward pass through ``torch.compile``.
        grad_clip: Maximum global gradient norm, or ``None``.
        label_smoothing: Cross-entropy label smoothing.
        post_step: Called with the model after every optimizer step
            (``normlab.post_step``).
        callbacks: Called with a :class:`StepInfo` after every optimizer step.
        progress: Show a tqdm progress bar with ETA for each epoch.
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
        device: torch.device,
        amp: str = "none",
        channels_last: bool = False,
        compile: bool = False,
        grad_clip: float | None = None,
        label_smoothing: float = 0.0,
        post_step: Callable[[nn.Module], None] = _no_post_step,
        callbacks: Sequence[StepCallback] = (),
        progress: bool = True,
        parallel: Parallel = SINGLE,
    ) -> None:
        if amp not in ("none", "bf16"):
            raise ValueError(f"train.amp must be 'none' or 'bf16', got {amp!r}")
        self.model = model
        self.parallel = parallel
        self.forward = torch.compile(model) if compile else model
        self.train_forward = self.forward
        if parallel.enabled:
            replicated = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
            self.train_forward = torch.compile(replicated) if compile else replicated
        self.optimizer = optimizer
        self.schedule = schedule
        self.device = device
        self.use_amp = amp == "bf16" and device.type == "cuda"
        self.channels_last = channels_last and device.type == "cuda"
        self.grad_clip = grad_clip
        self.label_smoothing = label_smoothing
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
        return self.optimizer.param_groups[0]["lr"]

    def _bar(self, loader: Iterable[Any], total: int, desc: str) -> Any:
        if not self.progress:
            return loader
        from tqdm.auto import tqdm

        return tqdm(loader, total=total, desc=desc, leave=False, dynamic_ncols=True)

    def train_epoch(self, loader: Iterable[Any], epoch: int) -> dict[str, float]:
        """Train one epoch.

        Args:
            loader: Training batches ``(x, y)`` with ``len()``.
            epoch: Zero-based epoch (sets the schedule position and the loader's epoch).

        Returns:
            ``lr`` (at the epoch's first step), ``train_loss``, ``train_acc`` (percent).

        Raises:
            NonFiniteLossError: The loss became NaN or infinite; no update was applied.
        """
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        steps = len(loader)  # type: ignore[arg-type]
        self.model.train()
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        seen = 0
        first_lr = self.set_lr(float(epoch))
        bar = self._bar(loader, steps, f"epoch {epoch + 1}")
        for step, (x, y) in enumerate(bar):
            lr = self.set_lr(epoch + step / steps)
            with _autocast(self.use_amp):
                logits = self.train_forward(_as_input(x, self.channels_last))
                loss = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
            value = loss.detach()
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
            loss.backward()
            if self.grad_clip is not None:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.optimizer.step()
            self.post_step(self.model)
            loss_sum += value * y.shape[0]
            correct += (logits.detach().argmax(1) == y).sum()
            seen += y.shape[0]
            info = StepInfo(epoch=epoch, step=step, steps_per_epoch=steps, lr=lr, loss=value)
            for callback in self.callbacks:
                callback(info)
            if self.progress and step % 10 == 0:
                bar.set_postfix(loss=f"{value.item():.3f}", lr=f"{lr:.4g}")
        loss_sum, correct, total = self.parallel.sum(
            loss_sum, correct, torch.tensor(seen, device=self.device)
        )
        if total == 0:
            raise ValueError("the training loader yielded no batches")
        return {
            "lr": first_lr,
            "train_loss": loss_sum.item() / total.item(),
            "train_acc": 100.0 * correct.item() / total.item(),
        }

    def evaluate(self, loader: Iterable[Any], *, classes: int | None = None) -> dict[str, float]:
        """Evaluate the model on ``loader`` (see :func:`evaluate`)."""
        return evaluate(
            self.model,
            loader,
            device=self.device,
            amp="bf16" if self.use_amp else "none",
            channels_last=self.channels_last,
            forward=self.forward,
            classes=classes,
            parallel=self.parallel,
        )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    device: torch.device,
    amp: str = "none",
    channels_last: bool = False,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    classes: int | None = None,
    parallel: Parallel = SINGLE,
) -> dict[str, float]:
    """Evaluate a classifier in eval mode (running or batch-averaged norm statistics).

    Args:
        model: The network (switched to eval mode).
        loader: Batches ``(x, y)`` on ``device``.
        device: Device of the batches.
        amp: ``"bf16"`` for bfloat16 autocast on CUDA; a no-op elsewhere.
        channels_last: Feed channels-last inputs (CUDA only).
        forward: Callable used for the forward pass (e.g. the compiled model);
            default ``model``.
        classes: Score only the first ``classes`` outputs, as a classifier over those
            classes (the primary classes of a mixed-data run: loss, top-1 and top-5 all
            use these columns); ``None`` scores all outputs.
        parallel: With several processes, each evaluates its share of every batch and
            the counts are summed, so every process returns the whole test set's metrics.

    Returns:
        ``test_loss``, ``test_acc`` and ``test_acc5`` (top-1/top-5, percent) and
        ``eval_time_s``.
    """
    from normlab.data import primary_logits

    start = time.perf_counter()
    forward = model if forward is None else forward
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    top1 = torch.zeros((), device=device, dtype=torch.int64)
    top5 = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    for x, y in loader:
        with _autocast(amp == "bf16" and device.type == "cuda"):
            logits = forward(_as_input(x, channels_last and device.type == "cuda")).float()
        if classes is not None:
            logits = primary_logits(logits, classes)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        k = min(5, logits.shape[1])
        hits = logits.topk(k, dim=1).indices == y[:, None]
        top1 += hits[:, 0].sum()
        top5 += hits.any(dim=1).sum()
        seen += y.shape[0]
    loss_sum, top1, top5, total = parallel.sum(
        loss_sum, top1, top5, torch.tensor(seen, device=device)
    )
    if total == 0:
        raise ValueError("the evaluation loader yielded no batches")
    seen = total.item()
    return {
        "test_loss": loss_sum.item() / seen,
        "test_acc": 100.0 * top1.item() / seen,
        "test_acc5": 100.0 * top5.item() / seen,
        "eval_time_s": time.perf_counter() - start,
    }
