"""The statistics-sync contract (norms/protocols.py) as to_sync uses it, without processes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from normlab.distributed import StatisticsSync, to_sync
from normlab.norms import StatisticsSyncFn, SyncableNorm, create_norm, list_norms


@pytest.mark.parametrize("name", list_norms())
def test_every_registered_norm_that_pools_a_batch_is_syncable(name: str) -> None:
    layer = create_norm(name, 4)
    model = to_sync(nn.Sequential(layer))
    if isinstance(layer, SyncableNorm) and layer.pools_batch:
        assert isinstance(layer.statistics_sync, StatisticsSync)
        to_sync(model, enabled=False)
        assert layer.statistics_sync is None
    else:
        assert getattr(layer, "statistics_sync", None) is None


class _OwnNorm(nn.Module):
    """A layer from outside normlab that follows the contract by its attributes alone."""

    def __init__(self, pools_batch: bool) -> None:
        super().__init__()
        self.pools_batch = pools_batch
        self.virtual_batch_size: int | None = None
        self.statistics_sync: StatisticsSyncFn | None = None


def test_to_sync_takes_any_layer_that_satisfies_the_protocol() -> None:
    pooling, instance = _OwnNorm(True), _OwnNorm(False)
    to_sync(nn.Sequential(pooling, instance, nn.ReLU()))
    assert isinstance(pooling.statistics_sync, StatisticsSync)
    assert instance.statistics_sync is None


def test_to_sync_refuses_virtual_batches_named() -> None:
    layer = _OwnNorm(True)
    layer.virtual_batch_size = 2
    with pytest.raises(ValueError, match=r"1 layer\(s\) use virtual batches \(_OwnNorm\)"):
        to_sync(nn.Sequential(layer))


def test_statistics_sync_without_a_process_group_keeps_local_statistics() -> None:
    sync: StatisticsSyncFn = StatisticsSync()
    mean, var = torch.randn(1, 3), torch.rand(1, 3)
    pooled_mean, pooled_var, samples = sync(mean, var, 5)
    assert pooled_mean is mean and pooled_var is var and samples == 5
