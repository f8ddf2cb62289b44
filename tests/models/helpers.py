"""Shared helpers for the model tests: parameter counting and cheap (meta-device) builds."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from normlab.models import create_model


def n_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters())


class _NoRandomInit(TorchFunctionMode):
    """Random initializers leave the tensor as it is (on the meta device there is nothing to
    fill; torch 2.14 runs them there through Python reference code, ~20x slower than the
    rest of a model's construction)."""

    RANDOM = frozenset({torch.Tensor.normal_, torch.Tensor.uniform_})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.RANDOM:
            return args[0]
        return func(*args, **(kwargs or {}))


@contextmanager
def on_meta() -> Iterator[None]:
    """Build modules on the meta device: same constructor code, no memory, no random
    initialization."""
    with torch.device("meta"), _NoRandomInit():
        yield


def meta_model(name: str, **kwargs: Any) -> nn.Module:
    """:func:`create_model` on the meta device (see :func:`on_meta`)."""
    with on_meta():
        return create_model(name, **kwargs)


def millions(count: int) -> float:
    """Parameter count in millions, rounded to 0.01 M as the paper's tables."""
    return round(count / 1e6, 2)
