"""Gradient accumulation (train.accumulate_steps): the gradient of the whole batch, the
batch statistics of a micro-batch (the SN paper's "(GPUs, samples per GPU)" axis)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import normlab
from normlab.norms import set_virtual_batch_size
from normlab.tasks.classification import ClassificationTask
from normlab.train import LRSchedule, Trainer, load_checkpoint, train
from normlab.train.parallel import leave_process_group

from ..processes import run_processes
from .test_parallel import _builders

BATCH, STEPS, PARTS = 12, 4, 3


class _Net(nn.Module):
    def __init__(self, norm: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        kwargs = {"num_groups": 3} if norm == "gn" else {}
        self.norm = normlab.create_norm(norm, 6, **kwargs)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.norm(self.conv(x))).mean((2, 3)))


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(BATCH, 3, 5, 5, generator=g, dtype=torch.float64),
         torch.randint(0, 4, (BATCH,), generator=g))
        for _ in range(STEPS)
    ]


def _train(norm: str, parts: int, virtual: int | None = None) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    model = _Net(norm).double()
    set_virtual_batch_size(model, virtual)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3)
    trainer = Trainer(model, optimizer, LRSchedule("constant", 1.0), task=ClassificationTask(),
                      device=torch.device("cpu"), progress=False, accumulate_steps=parts)
    row = trainer.train_epoch(_batches(), 0)
    assert row["train_acc"] >= 0 and row["images_per_s"] > 0
    return {k: v.clone() for k, v in model.named_parameters()}


@pytest.mark.parametrize("norm", ["ln", "in", "gn"])
def test_micro_batches_of_batch_independent_norms_train_like_one_batch(norm):
    whole, accumulated = _train(norm, 1), _train(norm, PARTS)
    for key, value in whole.items():
        assert not torch.equal(value, _initial(norm)[key]), key  # it trained
        torch.testing.assert_close(accumulated[key], value, rtol=1e-7, atol=1e-9)


def _initial(norm: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return {k: v.double() for k, v in _Net(norm).named_parameters()}


def test_micro_batches_give_batch_norm_the_statistics_of_a_micro_batch():
    whole, accumulated = _train("bn", 1), _train("bn", PARTS)
    assert not torch.allclose(accumulated["conv.weight"], whole["conv.weight"], atol=1e-6)
    micro_statistics = _train("bn", 1, virtual=BATCH // PARTS)  # k devices, B/k samples each
    for key, value in micro_statistics.items():
        torch.testing.assert_close(accumulated[key], value, rtol=1e-7, atol=1e-9)


def test_the_step_loss_and_metric_are_those_of_the_whole_batch():
    seen = []
    torch.manual_seed(1)
    model = _Net("ln").double()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.0),
                      LRSchedule("constant", 1.0), task=ClassificationTask(),
                      device=torch.device("cpu"), progress=False, accumulate_steps=PARTS,
                      callbacks=[seen.append])
    batches = _batches()
    row = trainer.train_epoch(batches, 0)
    model.eval()
    with torch.no_grad():
        losses = [nn.functional.cross_entropy(model(x).float(), y) for x, y in batches]
    for info, loss in zip(seen, losses, strict=True):
        torch.testing.assert_close(info.loss, loss)
        assert isinstance(info.output, tuple) and len(info.output) == PARTS
    assert row["train_loss"] == pytest.approx(float(torch.stack(losses).mean()))


def test_split_batch_and_batch_size():
    task = ClassificationTask()
    x, y = torch.arange(10.0).view(5, 2), torch.arange(5)
    parts = task.split_batch((x, y, "tag"), 2)
    assert [p[1].tolist() for p in parts] == [[0, 1, 2], [3, 4]]
    assert [p[2] for p in parts] == ["tag", "tag"] and isinstance(parts[0], tuple)
    assert [task.batch_size(p) for p in parts] == [3, 2]
    assert task.batch_size({"image": x}) == 5 and task.batch_size([x]) == 5
    assert [t.tolist() for t in task.split_batch(y, 3)] == [[0, 1], [2, 3], [4]]
    with pytest.raises(TypeError, match="override ClassificationTask.split_batch"):
        task.split_batch({"image": x}, 2)
    with pytest.raises(TypeError, match="override ClassificationTask.batch_size"):
        task.batch_size("no tensor")


def _two_process_worker(rank: int, config, out: str) -> None:
    try:
        train(config, run_dir=f"{out}/two", builders=_builders(), log=None)
    finally:
        leave_process_group()


@pytest.mark.slow
def test_two_processes_accumulating_micro_batches_train_like_one(tiny_config, tmp_path):
    """DDP all-reduces the gradients once per step (no_sync for the other micro-batches):
    2 processes x 2 micro-batches of LN give the weights of 1 process with whole batches."""
    one = tiny_config(model={"norm": "ln"}, run={"name": "one"})
    train(one, builders=_builders(), log=None)
    two = tiny_config(model={"norm": "ln"}, train={"accumulate_steps": 2})
    run_processes(_two_process_worker, (two, str(tmp_path / "runs")), world=2,
                  logs=tmp_path / "logs")
    single = load_checkpoint(tmp_path / "runs/one/last.pt")["model"]
    double = load_checkpoint(tmp_path / "runs/two/last.pt")["model"]
    for key, value in single.items():
        torch.testing.assert_close(double[key], value, rtol=1e-5, atol=1e-6)
