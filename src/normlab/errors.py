"""normlab's error hierarchy: every error a user can cause derives from :class:`NormlabError`.

The ``normlab`` command maps these classes to exit statuses and one-line messages
(:mod:`normlab.cli`): :class:`ConfigError` (and its :class:`UsageError`) exit with 2, every
other :class:`NormlabError` with 1. Each class also derives from the built-in exception
that code written against torch or the standard library expects (``ValueError`` for a bad
value, ``RuntimeError`` for a failed operation, ``ArithmeticError`` for a numerical
failure), so ``except ValueError`` keeps catching a bad config.

This module imports nothing from normlab, so every layer can raise these errors.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "NonFiniteLossError",
    "NormlabError",
    "NumericalError",
    "RunDirError",
    "UsageError",
]


class NormlabError(Exception):
    """Base class of every error normlab raises for something a user can fix."""


class ConfigError(NormlabError, ValueError):
    """A configuration value is invalid: an unknown key, a value of the wrong type or out of
    range, a name no registry holds, or an option the configured function does not take."""


class UsageError(ConfigError):
    """A command line that cannot be run as given (a missing or conflicting option)."""


class DataError(NormlabError):
    """A data set is missing, corrupt, or not what its reader expects."""


class CheckpointError(NormlabError, RuntimeError):
    """A checkpoint file is missing, truncated, corrupt or not a normlab checkpoint."""


class RunDirError(NormlabError, RuntimeError):
    """A run folder cannot be created, or does not hold what a command needs."""


class NumericalError(NormlabError, ArithmeticError):
    """A computation produced values that are not finite (NaN or infinity)."""


class NonFiniteLossError(NumericalError, RuntimeError):
    """The training loss became NaN or infinite; the run stopped before the bad update.

    Also a ``RuntimeError``, as it was before the hierarchy existed.

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
