"""``normlab bench layers``: every normalizer against torch's BatchNorm2d, side by side.

For each shape, torch's BatchNorm2d and every normlab layer (default backend, and the
plain reference backend; compiled too with ``compile=True``) are timed in interleaved
rounds, forward and forward+backward, in training mode. Times (as medians of per-round
paired ratios, see :mod:`normlab.bench.measure`), bytes saved for backward and peak memory
are reported as ratios to torch's BatchNorm2d of the same run; the spread is that of the
paired fwd+bwd ratios.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from normlab.bench.measure import (
    interleaved_times,
    peak_bandwidth_gbps,
    peak_bytes,
    saved_bytes,
)
from normlab.functional import get_backend
from normlab.norms import create_norm, list_norms

__all__ = ["DEFAULT_SHAPES", "LayerResult", "bench_layers", "bytes_moved"]

DEFAULT_SHAPES: tuple[tuple[int, int, int, int], ...] = (
    (128, 16, 32, 32),
    (128, 64, 32, 32),
    (128, 256, 8, 8),
    (32, 256, 56, 56),
)
BASELINE = "torch BatchNorm2d"


@dataclass
class LayerResult:
    """One layer at one shape; ``*_ratio`` fields are relative to torch's BatchNorm2d."""

    shape: tuple[int, ...]
    layer: str
    backend: str
    forward_ms: float
    step_ms: float
    forward_ratio: float
    step_ratio: float
    step_spread: float
    saved_ratio: float
    peak_ratio: float
    step_gbps: float | None = None
    step_peak_fraction: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def bytes_moved(x: torch.Tensor) -> int:
    """Minimum traffic of a fused training step: forward reads x twice and writes y;
    backward reads g and x twice and writes dx (8 tensor-sized transfers)."""
    return 8 * x.numel() * x.element_size()


def _allow_recompiles() -> None:
    """Every normlab layer class runs the same ``NormBase.forward`` code object, so layers
    compiled one by one are recompilations of it for dynamo; allow one per candidate
    and shape."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), 256))


def _candidates(
    channels: int, norms: Sequence[str], compile_layers: bool, device: torch.device
) -> dict[tuple[str, str], torch.nn.Module]:
    layers: dict[tuple[str, str], torch.nn.Module] = {
        (BASELINE, "cudnn" if device.type == "cuda" else "aten"): torch.nn.BatchNorm2d(channels)
    }
    default = get_backend()
    for name in norms:
        layers[(name, default)] = create_norm(name, channels)
        layers[(name, "reference")] = create_norm(name, channels, backend="reference")
        if compile_layers:
            _allow_recompiles()
            compiled = torch.compile(create_norm(name, channels), fullgraph=True)
            assert isinstance(compiled, torch.nn.Module)  # torch.compile of a module
            layers[(name, "compiled")] = compiled
    return {key: layer.to(device).train() for key, layer in layers.items()}


def bench_layers(
    shapes: Sequence[Sequence[int]] = DEFAULT_SHAPES,
    norms: Sequence[str] | None = None,
    *,
    repeats: int = 10,
    warmup: int = 2,
    compile_layers: bool = False,
    device: str = "cpu",
    peak_gbps: float | None = None,
    progress=None,
) -> list[LayerResult]:
    """Benchmark every norm at every shape; returns one :class:`LayerResult` per pair.

    Args:
        shapes: (N, C, H, W) input shapes.
        norms: registry names (default: all).
        repeats: timed rounds per candidate (after ``warmup`` untimed rounds).
        compile_layers: also time ``torch.compile(layer, fullgraph=True)``.
        device: ``"cpu"`` or ``"cuda"``.
        peak_gbps: the device's peak memory bandwidth for the "% of peak" column on CUDA
            (default: read from the device, see
            :func:`~normlab.bench.measure.peak_bandwidth_gbps`).
        progress: optional callable ``progress(message)`` called per shape.
    """
    dev = torch.device(device)
    names = list(norms or list_norms())
    results: list[LayerResult] = []
    for shape in shapes:
        shape = tuple(int(s) for s in shape)
        if progress:
            progress(f"shape {shape}")
        results += _bench_shape(shape, names, repeats, warmup, compile_layers, dev)
    peak = peak_gbps or peak_bandwidth_gbps(dev)
    for r in results:
        if r.step_gbps is not None and peak:
            r.step_peak_fraction = r.step_gbps / peak
    return results


def _bench_shape(
    shape: tuple[int, ...],
    names: list[str],
    repeats: int,
    warmup: int,
    compile_layers: bool,
    dev: torch.device,
) -> list[LayerResult]:
    x = torch.randn(shape, device=dev, requires_grad=True)
    grad = torch.randn(shape, device=dev)
    layers = _candidates(shape[1], names, compile_layers, dev)

    def forward(layer: torch.nn.Module) -> torch.Tensor:
        y: torch.Tensor = layer(x)
        return y

    def step(layer: torch.nn.Module) -> None:
        layer(x).backward(grad)
        x.grad = None

    forward_times = interleaved_times(
        {k: functools.partial(forward, m) for k, m in layers.items()}, repeats, warmup, dev
    )
    step_times = interleaved_times(
        {k: functools.partial(step, m) for k, m in layers.items()}, repeats, warmup, dev
    )
    saved = {k: saved_bytes(functools.partial(forward, m)) for k, m in layers.items()}
    peaks = {k: peak_bytes(functools.partial(step, m), dev) for k, m in layers.items()}
    base = next(iter(layers))
    results = []
    for key in layers:
        step_s = step_times[key].median
        step_ratio = step_times[key].ratio_to(step_times[base])
        results.append(
            LayerResult(
                shape=shape,
                layer=key[0],
                backend=key[1],
                forward_ms=forward_times[key].median * 1e3,
                step_ms=step_s * 1e3,
                forward_ratio=forward_times[key].ratio_to(forward_times[base]).median,
                step_ratio=step_ratio.median,
                step_spread=step_ratio.spread,
                saved_ratio=saved[key] / max(saved[base], 1),
                peak_ratio=peaks[key] / max(peaks[base], 1),
                step_gbps=bytes_moved(x) / step_s / 1e9 if dev.type == "cuda" else None,
            )
        )
    return results
