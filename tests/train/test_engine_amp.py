"""train.amp=bf16 on CPU: bfloat16 autocast in training and evaluation, with every norm."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import normlab
from normlab.tasks.classification import AccuracyMetric, ClassificationTask
from normlab.train import LRSchedule, Trainer
from normlab.train.engine import first_non_finite


class _Net(nn.Module):
    def __init__(self, norm: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.norm = normlab.create_norm(norm, 8)
        self.fc = nn.Linear(8, 4)
        self.seen: list[torch.dtype] = []
        self.conv.register_forward_hook(lambda m, i, out: self.seen.append(out.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.norm(self.conv(x))).mean((2, 3)))


def _batches(n: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 4, (8,), generator=g))
            for _ in range(n)]


@pytest.mark.parametrize("norm", normlab.list_norms())
def test_a_bf16_step_on_cpu_runs_in_bfloat16_with_every_norm(norm):
    torch.manual_seed(0)
    model = _Net(norm)
    before = model.conv.weight.detach().clone()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1),
                      LRSchedule("constant", 1.0), task=ClassificationTask(),
                      device=torch.device("cpu"), amp="bf16", progress=False)
    losses = []
    trainer.callbacks.append(lambda info: losses.append(info.loss))
    row = trainer.train_epoch(_batches(), 0)
    assert model.seen == [torch.bfloat16] * 2
    assert all(bool(torch.isfinite(loss)) for loss in losses) and len(losses) == 2
    assert model.conv.weight.dtype == torch.float32
    assert not torch.equal(model.conv.weight, before)
    assert first_non_finite(model) is None
    result = trainer.evaluate(_batches(1), AccuracyMetric(torch.device("cpu")))
    assert model.seen[-1] == torch.bfloat16
    assert torch.isfinite(torch.tensor([row["train_loss"], result["test_loss"]])).all()


def test_without_amp_the_forward_stays_float32():
    model = _Net("bn")
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1),
                      LRSchedule("constant", 1.0), task=ClassificationTask(),
                      device=torch.device("cpu"), progress=False)
    trainer.train_epoch(_batches(1), 0)
    assert model.seen == [torch.float32]
