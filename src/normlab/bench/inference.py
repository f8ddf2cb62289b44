"""``normlab bench inference``: eval-mode forward of a network per norm, unfused and after
:func:`normlab.fuse_for_inference`, as ratios to the same network built with torch's own
BatchNorm2d (unfused) measured in the same run."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from normlab.bench.measure import interleaved_times
from normlab.models import create_model
from normlab.norms import NormBase, SwitchNorm, SwitchNorm2d, fuse_for_inference, list_norms

__all__ = ["BASELINE", "HARDENED", "InferenceResult", "bench_inference"]

BASELINE = "torch BatchNorm2d"
HARDENED = "sn hardened to bn"
"""SN with every layer at its BN-equivalent point (``start_from_bn``: one-hot BN ratios),
the state in which SN folds into the convolutions like BN."""


@dataclass
class InferenceResult:
    """Median eval forward time of one network and its per-round ratio to the baseline;
    ``folded`` counts the norm layers fused into a convolution or a per-channel affine."""

    model: str
    norm: str
    fused: bool
    batch_size: int
    forward_ms: float
    ratio: float
    spread: float
    folded: int
    norm_layers: int

    def as_dict(self) -> dict:
        return asdict(self)


def _network(model: str, norm: str, num_classes: int) -> nn.Module:
    if norm == BASELINE:
        return create_model(model, num_classes=num_classes, norm=nn.BatchNorm2d).eval()
    net = create_model(model, num_classes=num_classes,
                       norm=SwitchNorm2d if norm == HARDENED else norm)
    if norm == HARDENED:
        for layer in net.modules():
            if isinstance(layer, SwitchNorm):
                layer.start_from_bn()
    return net.eval()


def _norm_layers(net: nn.Module) -> int:
    return sum(isinstance(m, (NormBase, nn.modules.batchnorm._BatchNorm)) for m in net.modules())


def bench_inference(
    model: str = "resnet50",
    norms: Sequence[str] | None = None,
    *,
    batch_size: int = 8,
    image_size: int = 224,
    num_classes: int = 1000,
    repeats: int = 5,
    warmup: int = 1,
    device: str = "cpu",
) -> list[InferenceResult]:
    """Time the eval forward of ``model`` built with each norm (at initialization, so BIN's
    rho = 1 and IEBN's gate_weight = 0 fold exactly; SN's soft ratios do not, its hardened
    row does), unfused and fused, against the torch-BatchNorm2d network unfused."""
    dev = torch.device(device)
    x = torch.randn(batch_size, 3, image_size, image_size, device=dev)
    names = [*(norms or list_norms()), HARDENED]
    calls: dict[tuple[str, bool], Callable[[], object]] = {}
    counts: dict[tuple[str, bool], tuple[int, int]] = {}
    for name in [BASELINE, *names]:
        net = _network(model, name, num_classes).to(dev)
        variants = {False: net} if name == BASELINE else {False: net, True: fuse_for_inference(net)}
        for fused, variant in variants.items():
            calls[(name, fused)] = functools.partial(variant, x)
            counts[(name, fused)] = (
                _norm_layers(net) - _norm_layers(variant) if fused else 0,
                _norm_layers(net),
            )
    with torch.inference_mode():
        times = interleaved_times(calls, repeats, warmup, dev)
    base = times[(BASELINE, False)]
    return [
        InferenceResult(model, name, fused, batch_size, t.median * 1e3, t.ratio_to(base).median,
                        t.ratio_to(base).spread, *counts[(name, fused)])
        for (name, fused), t in times.items()
    ]
