"""The loaders' position inside an epoch (EpochLoader): counted, saved and resumed exactly."""

from __future__ import annotations

import pytest
import torch

from normlab.data import DeviceLoader, ImageData, MixedLoader

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _data(n: int, name: str, seed: int = 0) -> ImageData:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 6, 6), dtype=torch.uint8, generator=generator)
    labels = torch.arange(n) % 3
    return ImageData(images, labels, 3, ["a", "b", "c"], MEAN, STD, name)


def _device_loader() -> DeviceLoader:
    return DeviceLoader(_data(22, "d"), 4, train=True, seed=5)


def _mixed_loader() -> MixedLoader:
    return MixedLoader(_data(20, "p"), _data(9, "s", 1), 1, primary_batch=4,
                       secondary_per_k=3, seed=5)


LOADERS = {"device": _device_loader, "mixed": _mixed_loader}


def _same(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_the_position_counts_yielded_batches(kind):
    loader = LOADERS[kind]()
    steps = len(loader)
    assert loader.state_dict() == {"epoch": 0, "batch": 0, "seed": 5}
    seen = []
    for k, _ in enumerate(loader, start=1):
        seen.append(loader.state_dict())
        assert seen[-1] == ({"epoch": 0, "batch": k, "seed": 5} if k < steps
                            else {"epoch": 1, "batch": 0, "seed": 5})
    assert len(seen) == steps
    assert loader.state_dict() == {"epoch": 1, "batch": 0, "seed": 5}


@pytest.mark.parametrize("kind", sorted(LOADERS))
@pytest.mark.parametrize("epoch", [0, 2])
def test_resuming_inside_an_epoch_yields_the_tail_of_the_uninterrupted_epoch(kind, epoch):
    straight = LOADERS[kind]()
    straight.set_epoch(epoch)
    whole = list(straight)
    for k in (1, 3, len(whole) - 1):
        interrupted = LOADERS[kind]()
        interrupted.set_epoch(epoch)
        for _, _ in zip(range(k), interrupted, strict=False):
            pass
        state = interrupted.state_dict()
        assert state == {"epoch": epoch, "batch": k, "seed": 5}
        fresh = LOADERS[kind]()
        fresh.load_state_dict(state)
        _same(list(fresh), whole[k:])
        _same(list(interrupted), whole[k:])  # an abandoned pass continues where it stopped
        assert fresh.state_dict() == {"epoch": epoch + 1, "batch": 0, "seed": 5}


def test_old_states_and_bad_positions():
    loader = _device_loader()
    loader.load_state_dict({"epoch": 3, "seed": 5})  # saved before positions existed
    assert loader.state_dict() == {"epoch": 3, "batch": 0, "seed": 5}
    loader.load_state_dict({"epoch": 3, "batch": len(loader), "seed": 5})
    assert loader.state_dict() == {"epoch": 4, "batch": 0, "seed": 5}
    with pytest.raises(ValueError, match="at batch 9 of epoch 3, but an epoch of this loader "
                                         "has 5 batches"):
        loader.load_state_dict({"epoch": 3, "batch": 9, "seed": 5})
    loader.load_state_dict({"epoch": 1, "batch": 2, "seed": 5})
    loader.set_epoch(2)
    assert loader.state_dict() == {"epoch": 2, "batch": 0, "seed": 5}
