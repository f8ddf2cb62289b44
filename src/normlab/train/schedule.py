"""Learning-rate schedules as pure functions of training progress (in epochs).

A schedule maps progress ``t`` (epochs, fractional within an epoch) to a factor that
multiplies each parameter group's initial learning rate. The engine sets the learning rate
before every optimizer step from ``t = epoch + step / steps_per_epoch``, so a schedule has
no state of its own and resuming needs only the epoch counter.

- ``multistep`` (IEBN Tables 6/7, BIN, SN step): ``gamma ** (number of milestones <= t)``.
- ``cosine`` (SN cosine recipe): ``min + (1 - min) * (1 + cos(pi * u)) / 2`` with
  ``u = (t - warmup) / (epochs - warmup)``.
- ``constant``: 1.
- Warm-up (any schedule): linear from ``warmup_start_factor`` at ``t = 0`` to the schedule's
  value at ``t = warmup_epochs``.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from normlab.train.config import OptimConfig, ScheduleConfig
from normlab.train.errors import ConfigError

__all__ = ["LRSchedule", "scaled_lr"]

_NAMES = ("multistep", "cosine", "constant")


@dataclass(frozen=True)
class LRSchedule:
    """Learning-rate factor as a function of progress in epochs.

    Attributes:
        name: ``multistep``, ``cosine`` or ``constant``.
        epochs: Total training epochs.
        milestones: Multistep decay epochs, sorted.
        gamma: Multistep decay factor.
        warmup_epochs: Length of the linear warm-up.
        warmup_start_factor: Factor at ``t = 0``.
        min_factor: Final factor of ``cosine``.
    """

    name: str
    epochs: float
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    warmup_start_factor: float = 0.0
    min_factor: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in _NAMES:
            raise ConfigError(
                f"schedule.name must be one of {', '.join(_NAMES)}, got {self.name!r}"
            )
        if list(self.milestones) != sorted(self.milestones):
            raise ConfigError(
                f"schedule.milestones must be increasing, got {list(self.milestones)}"
            )
        if self.warmup_epochs < 0 or 0 < self.epochs <= self.warmup_epochs:
            raise ConfigError(
                f"schedule.warmup_epochs ({self.warmup_epochs}) must be in [0, train.epochs "
                f"= {self.epochs})"
            )

    @classmethod
    def from_config(cls, schedule: ScheduleConfig, epochs: int) -> LRSchedule:
        """Build from the ``schedule`` section and ``train.epochs``."""
        return cls(
            name=schedule.name,
            epochs=float(epochs),
            milestones=tuple(float(m) for m in schedule.milestones),
            gamma=schedule.gamma,
            warmup_epochs=schedule.warmup_epochs,
            warmup_start_factor=schedule.warmup_start_factor,
            min_factor=schedule.min_factor,
        )

    def _main(self, t: float) -> float:
        if self.name == "multistep":
            return self.gamma ** bisect.bisect_right(self.milestones, t)
        if self.name == "cosine":
            span = max(self.epochs - self.warmup_epochs, 1e-12)
            u = min(max((t - self.warmup_epochs) / span, 0.0), 1.0)
            return self.min_factor + (1 - self.min_factor) * (1 + math.cos(math.pi * u)) / 2
        return 1.0

    def factor(self, t: float) -> float:
        """Learning-rate factor at progress ``t`` epochs."""
        if t < self.warmup_epochs:
            end = self._main(self.warmup_epochs)
            frac = t / self.warmup_epochs
            return self.warmup_start_factor + (end - self.warmup_start_factor) * frac
        return self._main(t)


def scaled_lr(optim: OptimConfig, batch_size: int) -> float:
    """Base learning rate after the linear scaling rule (SN recipe: ``lr * batch / 256``).

    Returns ``optim.lr`` unchanged when ``optim.lr_reference_batch`` is not set.
    """
    if optim.lr_reference_batch is None:
        return optim.lr
    if optim.lr_reference_batch <= 0:
        raise ConfigError("optim.lr_reference_batch must be a positive batch size")
    return optim.lr * batch_size / optim.lr_reference_batch
