"""Errors raised by the dataset readers.

Every reader error names the file it was reading, says what it expected, and says where a
user gets the data, so the message alone is enough to fix the problem.
"""

from __future__ import annotations

from pathlib import Path

from normlab.errors import DataError

__all__ = ["DatasetError", "MissingDatasetError", "CorruptDatasetError"]


class DatasetError(DataError):
    """Base class of all data-set errors raised by :mod:`normlab.data` (a
    :class:`normlab.errors.DataError`).

    Args:
        path: The file or folder the error is about.
        problem: What is wrong with it (what was expected, what was found).
        hint: How the user fixes it (where to get the data, what to pass).
    """

    def __init__(self, path: str | Path, problem: str, hint: str = "") -> None:
        self.path = Path(path)
        self.problem = problem
        self.hint = hint
        message = f"{self.path}: {problem}"
        if hint:
            message = f"{message}. {hint}"
        super().__init__(message)

    def __str__(self) -> str:
        return str(self.args[0])


class MissingDatasetError(DatasetError, FileNotFoundError):
    """A data file or folder a reader needs does not exist."""


class CorruptDatasetError(DatasetError, ValueError):
    """A data file exists but is truncated, corrupt or not in the expected format."""
