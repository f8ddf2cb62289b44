"""Exceptions a user of the training engine can cause, each with a message saying how to fix it."""

from __future__ import annotations

__all__ = ["CheckpointError", "ConfigError", "NonFiniteLossError", "RunDirError"]


class ConfigError(ValueError):
    """A run config has an unknown key, a value of the wrong type, or a bad ``--set`` override."""


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt or not a normlab checkpoint."""


class RunDirError(RuntimeError):
    """A run folder cannot be created, or does not hold what a command needs."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stopped before the bad update.

    Attributes:
        epoch: Zero-based epoch in which the loss became non-finite.
        step: Zero-based step within that epoch.
        value: The offending loss value (``nan``, ``inf`` or ``-inf``).
    """

    def __init__(self, message: str, *, epoch: int, step: int, value: float) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.value = value
