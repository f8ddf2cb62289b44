"""Shared helpers for the model tests: parameter counting and cheap (meta-device) builds."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from normlab.models import create_model


def n_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters())


def meta_model(name: str, **kwargs: Any) -> nn.Module:
    """Build on the meta device: same constructor code, no memory, no initialisation."""
    with torch.device("meta"):
        return create_model(name, **kwargs)


def millions(count: int) -> float:
    """Parameter count in millions, rounded to 0.01 M as the paper's tables."""
    return round(count / 1e6, 2)
