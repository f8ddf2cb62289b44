"""Tiny data, model and builders so engine tests run in seconds without the data/model zoo."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

import normlab
from normlab.train import Builders
from normlab.train.factory import Loaders, build_optimizer


class TinyLoader:
    """Seeded shuffling per epoch; random flips from the global torch RNG (as augmentation)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, train: bool) -> None:
        self.x, self.y, self.batch_size, self.train = x, y, batch_size, train
        self.epoch = 0
        self.poison: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.x) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.x)
        order = torch.arange(n)
        if self.train:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(100 + self.epoch))
        for step in range(len(self)):
            idx = order[step * self.batch_size : (step + 1) * self.batch_size]
            x = self.x[idx]
            if self.train:
                flip = torch.rand(len(idx)) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(3), x)
            if self.poison == (self.epoch, step):
                x = torch.full_like(x, float("nan"))
            yield x, self.y[idx]


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    centers = torch.randn(4, 3, 1, 1, generator=torch.Generator().manual_seed(0))
    x = centers[y] + 0.7 * torch.randn(n, 3, 8, 8, generator=g)
    return x, y


class TinyNet(nn.Module):
    def __init__(self, num_classes: int, in_chans: int, norm: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, 8, 3, padding=1, bias=False)
        self.norm = normlab.create_norm(norm, 8)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.norm(self.conv(x))).mean((2, 3))
        return self.fc(self.drop(h))


def tiny_builders(poison: tuple[int, int] | None = None) -> Builders:
    def loaders(data, *, seed, device):
        train = TinyLoader(*make_data(128, 1), data.batch_size, train=True)
        train.poison = poison
        test = TinyLoader(*make_data(64, 2), 32, train=False)
        return Loaders(train, test, num_classes=4, in_chans=3)

    def model(cfg, *, num_classes, in_chans):
        return TinyNet(num_classes, in_chans, cfg.norm)

    return Builders(loaders=loaders, model=model, optimizer=build_optimizer)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: the CPU is shared, and spinning OpenMP workers then stall."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
