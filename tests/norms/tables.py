"""Test tables generated from the norm registry, so that a newly registered norm is in
every table: each registered norm, and the constructor variants it declares with
``register_norm(..., test_variants=...)``."""

from __future__ import annotations

from typing import Any

import torch

import normlab
from normlab.norms import TorchTwin, create_norm, norm_info


def norm_variants() -> dict[str, tuple[str, dict[str, Any]]]:
    """Variant id (``"gn"``, ``"iebn-fc"``) -> (norm name, constructor arguments)."""
    return {
        f"{name}-{suffix}" if suffix else name: (name, dict(kwargs))
        for name in normlab.list_norms()
        for suffix, kwargs in norm_info(name).test_variants.items()
    }


def torch_twins() -> dict[str, TorchTwin]:
    """Norm name -> its declared torch twin, for every norm that has one."""
    infos = [norm_info(name) for name in normlab.list_norms()]
    return {info.name: info.twin for info in infos if info.twin is not None}


def batch_pooling_norms() -> list[str]:
    """The norms that pool statistics over the samples of a batch (BN and its kin)."""
    return [n for n in normlab.list_norms() if getattr(create_norm(n, 4), "pools_batch", False)]


def instance_statistics_norms() -> list[str]:
    """The norms that normalize each (n, c) by its own statistics (in training)."""
    return [
        name for name, twin in torch_twins().items()
        if twin.kind == "in" or twin.instance_branch
    ]


class EveryNorm:
    """A norm spec (``norm=EveryNorm()``) that builds the registered norms in turn, from the
    ``start``-th on, so one network holds every norm at positions all over it."""

    def __init__(self, start: int = 0) -> None:
        self.start = start
        self.built: list[str] = []

    def __call__(self, num_features: int, **kwargs: Any) -> torch.nn.Module:
        names = normlab.list_norms()
        name = names[(self.start + len(self.built)) % len(names)]
        self.built.append(name)
        return create_norm(name, num_features, **kwargs)
