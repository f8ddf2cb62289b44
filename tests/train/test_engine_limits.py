"""Dry runs (train.limit_batches, ``normlab train --limit-batches N``), throughput columns,
and loaders that shard themselves."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import yaml

from normlab.cli import main
from normlab.data import DeviceLoader, ImageData
from normlab.tasks.classification import AccuracyMetric, ClassificationTask
from normlab.train import ConfigError, train
from normlab.train.engine import evaluate
from normlab.train.factory import Loaders
from normlab.train.parallel import Parallel, ShardedLoader
from normlab.train.runner import _shard_loaders

from .tiny import tiny_builders


class _Counting:
    """A loader that counts the batches taken from it."""

    def __init__(self, loader):
        self.loader, self.taken = loader, 0

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            self.taken += 1
            yield batch


def test_limit_batches_trains_and_evaluates_n_batches_per_epoch(tiny_config, tmp_path):
    base = tiny_builders()
    made = {}

    def loaders(data, *, seed, device):
        made["loaders"] = base.loaders(data, seed=seed, device=device)
        made["test"] = _Counting(made["loaders"].test)
        return dataclasses.replace(made["loaders"], test=made["test"])

    steps, lines = [], []
    summary = train(tiny_config(train={"limit_batches": 2}),
                    builders=dataclasses.replace(base, loaders=loaders),
                    callbacks=[lambda info: steps.append((info.epoch, info.step,
                                                          info.steps_per_epoch))],
                    log=lines.append)
    assert steps == [(0, 0, 2), (0, 1, 2), (1, 0, 2), (1, 1, 2)]
    assert made["test"].taken == 4 and len(made["loaders"].test) == 2  # 2 per evaluation
    assert summary["limit_batches"] == 2
    assert lines[0].endswith("[limited: 2 training and 2 evaluation batches per epoch]")
    folder = tmp_path / "runs" / "tiny"
    rows = [json.loads(r) for r in (folder / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        assert row["images_per_s"] > 0 and row["data_wait_s"] >= 0
    assert rows[1]["lr"] == pytest.approx(0.05)  # the schedule still counts epochs


def _data(n: int) -> ImageData:
    images = torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    return ImageData(images, torch.arange(n) % 2, 2, ["a", "b"], (0.5,) * 3, (0.5,) * 3, "d")


def test_a_limited_evaluation_reads_the_same_batches_every_time():
    loader = DeviceLoader(_data(12), 4, train=False)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 2))
    task = ClassificationTask()

    def score(limit):
        return evaluate(task, model, loader, AccuracyMetric(torch.device("cpu")), limit=limit)

    first, again = score(1), score(1)
    assert first["test_loss"] == again["test_loss"]
    assert loader.state_dict()["batch"] == 1  # left inside the pass, rewound before the next
    whole = score(None)
    assert whole["test_loss"] != first["test_loss"]
    assert loader.state_dict() == {"epoch": 1, "batch": 0, "seed": 0}


def test_limit_batches_on_the_command_line_means_one_epoch(capsys):
    args = ["train", "-c", "iebn_cifar_resnet164", "--limit-batches", "2", "--print-config"]
    assert main(args) == 0
    printed = yaml.safe_load(capsys.readouterr().out)["train"]
    assert (printed["epochs"], printed["limit_batches"]) == (1, 2)
    assert main([*args, "--set", "train.epochs=3"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)["train"]
    assert (printed["epochs"], printed["limit_batches"]) == (3, 2)
    assert main(["train", "-c", "iebn_cifar_resnet164", "--limit-batches", "0"]) == 2
    assert "train.limit_batches" in capsys.readouterr().err


class _SelfSharding(list):
    def shard(self, rank, world_size):
        return ("own share", rank, world_size)


def test_loaders_that_shard_themselves_are_asked_for_their_share(tiny_config):
    config = tiny_config(data={"batch_size": 16})
    loaders = Loaders(_SelfSharding(), [], num_classes=2, in_chans=3)
    sharded = _shard_loaders(loaders, config, Parallel(1, 2))
    assert sharded.train == ("own share", 1, 2) and isinstance(sharded.test, ShardedLoader)
    assert _shard_loaders(loaders, config, Parallel()) is loaders


def test_the_batch_must_split_into_equal_micro_batches(tiny_config):
    config = tiny_config(data={"batch_size": 16}, train={"accumulate_steps": 3})
    with pytest.raises(ConfigError, match=r"does not split evenly over 3 micro-batches "
                                          r"\(train.accumulate_steps\); use a multiple of 3"):
        _shard_loaders(Loaders([], [], num_classes=2, in_chans=3), config, Parallel())


def test_a_limited_run_from_the_command_line_says_so(tmp_path, capsys):
    argv = ["train", "-c", "iebn_cifar_resnet164_tiny", "-q", "--limit-batches", "2",
            "--set", f"run.out_dir={tmp_path}", "run.name=dry"]
    assert main(argv) == 0
    assert "(limited to 2 batches per epoch)" in capsys.readouterr().out
    summary = json.loads((tmp_path / "dry" / "summary.json").read_text())
    assert (summary["status"], summary["epochs_done"], summary["limit_batches"]) == (
        "completed", 1, 2)
    assert len((tmp_path / "dry" / "metrics.jsonl").read_text().splitlines()) == 1
