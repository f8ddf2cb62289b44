"""``normlab bench models``: one training step of a network per norm, as a ratio to the same
network built with torch's own BatchNorm2d."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from normlab.bench.measure import interleaved_times
from normlab.models import create_model
from normlab.norms import list_norms, param_groups, post_step

__all__ = ["BASELINE", "ModelResult", "bench_models"]

BASELINE = "torch BatchNorm2d"


@dataclass
class ModelResult:
    """Median time of one training step (forward, backward, SGD step), and the median and
    spread of its per-round ratio to the torch BatchNorm2d network."""

    model: str
    norm: str
    batch_size: int
    step_ms: float
    step_ratio: float
    step_spread: float

    def as_dict(self) -> dict:
        return asdict(self)


def bench_models(
    model: str = "resnet164",
    norms: Sequence[str] | None = None,
    *,
    batch_size: int = 64,
    image_size: int = 32,
    num_classes: int = 100,
    repeats: int = 5,
    warmup: int = 1,
    device: str = "cpu",
) -> list[ModelResult]:
    """Time one SGD training step of ``model`` built with torch's BatchNorm2d (the
    baseline, first row) and with each normlab norm."""
    dev = torch.device(device)
    names = [BASELINE, *(norms or list_norms())]
    x = torch.randn(batch_size, 3, image_size, image_size, device=dev)
    y = torch.randint(0, num_classes, (batch_size,), device=dev)
    steps: dict[str, Callable[[], object]] = {}
    for name in names:
        norm = torch.nn.BatchNorm2d if name == BASELINE else name
        net = create_model(model, num_classes=num_classes, norm=norm).to(dev).train()
        optimizer = torch.optim.SGD(param_groups(net, 0.01, 1e-4), momentum=0.9)

        def step(net=net, optimizer=optimizer):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()
            optimizer.step()
            post_step(net)

        steps[name] = step
    times = interleaved_times(steps, repeats, warmup, dev)
    ratios = {name: t.ratio_to(times[BASELINE]) for name, t in times.items()}
    return [
        ModelResult(model, name, batch_size, t.median * 1e3, ratios[name].median,
                    ratios[name].spread)
        for name, t in times.items()
    ]
