"""Two training processes (gloo, CPU, as torchrun starts them) train like one process.

Each process takes half of every global batch, BN/SN/BIN statistics are synced and DDP
averages gradients, so the weights after two epochs equal those of one process with the
whole batch (up to float summation order), straight or resumed; only rank 0 writes.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from normlab.train import ConfigError, load_checkpoint, resume, train
from normlab.train.parallel import Parallel, ShardedLoader, leave_process_group

from ..processes import run_processes
from .tiny import tiny_builders

WORLD = 2
NORMS = ("sn", "bin")


def _builders():
    """The tiny builders without dropout: its masks would depend on how a batch is split."""
    base = tiny_builders()

    def model(cfg, *, num_classes, in_chans):
        net = base.model(cfg, num_classes=num_classes, in_chans=in_chans)
        net.drop = nn.Identity()
        return net

    return type(base)(loaders=base.loaders, model=model, optimizer=base.optimizer)


def _worker(rank: int, configs: dict, out: str) -> None:
    try:
        for norm, config in configs.items():
            train(config, run_dir=f"{out}/{norm}-straight", builders=_builders(), log=None)
            one_epoch = dataclasses.replace(
                config, train=dataclasses.replace(config.train, epochs=1)
            )
            train(one_epoch, run_dir=f"{out}/{norm}-resumed", builders=_builders(), log=None)
            resume(f"{out}/{norm}-resumed", overrides=["train.epochs=2"],
                   builders=_builders(), log=None)
    finally:
        leave_process_group()  # joined by train(); left here, as the CLI does


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from normlab.train import config_from_dict

    out = tmp_path_factory.mktemp("parallel")
    configs = {
        norm: config_from_dict({
            "model": {"name": "resnet20", "norm": norm},  # built by tiny_builders
            "data": {"batch_size": 16},
            "optim": {"lr": 0.1, "weight_decay": 5e-4},
            "schedule": {"name": "multistep", "milestones": [1], "gamma": 0.5},
            "train": {"epochs": 2, "device": "cpu", "seed": 3},
            "run": {"out_dir": str(out), "progress": False},
        })
        for norm in NORMS
    }
    run_processes(_worker, (configs, str(out)), world=WORLD,
                  logs=tmp_path_factory.mktemp("parallel-logs"))
    for norm, config in configs.items():
        train(config, run_dir=out / f"{norm}-single", builders=_builders(), log=None)
    return out


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("how", ["straight", "resumed"])
def test_two_processes_reach_the_weights_of_one(runs, norm, how):
    single = load_checkpoint(runs / f"{norm}-single" / "last.pt")
    multi = load_checkpoint(runs / f"{norm}-{how}" / "last.pt")
    assert multi["epoch"] == single["epoch"] == 2
    for key, value in single["model"].items():
        torch.testing.assert_close(multi["model"][key], value, rtol=1e-4, atol=1e-5,
                                   msg=f"{key}")
    rows = (runs / f"{norm}-{how}" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2


def test_only_rank_zero_writes(runs):
    names = sorted(p.name for p in runs.iterdir())
    assert names == sorted(f"{n}-{h}" for n in NORMS for h in ("single", "straight", "resumed"))
    for folder in runs.iterdir():
        assert not list(folder.glob("*.tmp")), folder


def test_sharded_loader_splits_every_batch_and_keeps_the_epoch_interface():
    batches = [(torch.arange(6).float(), torch.arange(6))]

    class Loader(list):
        epoch = None

        def set_epoch(self, epoch):
            self.epoch = epoch

    loader = Loader(batches)
    shards = [list(ShardedLoader(loader, Parallel(rank, 4))) for rank in range(4)]
    assert [s[0][1].tolist() for s in shards] == [[0, 1], [2, 3], [4], [5]]
    ShardedLoader(loader, Parallel(1, 4)).set_epoch(3)
    assert loader.epoch == 3 and len(ShardedLoader(loader, Parallel(0, 4))) == 1


def test_global_batch_must_split_evenly(tiny_config, monkeypatch):
    import normlab.train.runner as runner

    monkeypatch.setattr(runner, "_join", lambda config: (Parallel(0, 3), torch.device("cpu")))
    monkeypatch.setattr(Parallel, "broadcast", lambda self, value: value)
    with pytest.raises(ConfigError, match="does not split evenly over 3 processes"):
        train(tiny_config(), builders=_builders(), log=None)
