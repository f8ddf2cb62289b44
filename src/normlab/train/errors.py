"""Exceptions a user of the training engine can cause (defined in :mod:`normlab.errors`).

Kept so that ``from normlab.train.errors import ConfigError`` keeps working; the classes are
the same objects as :mod:`normlab.errors`'s.
"""

from __future__ import annotations

from normlab.errors import CheckpointError, ConfigError, NonFiniteLossError, RunDirError

__all__ = ["CheckpointError", "ConfigError", "NonFiniteLossError", "RunDirError"]
