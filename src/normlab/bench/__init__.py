"""Benchmarks: layer and model timings as ratios to torch's BatchNorm2d measured in the
same run (``normlab bench layers``, ``normlab bench models``)."""

from normlab.bench.layers import LayerResult, bench_layers
from normlab.bench.models import ModelResult, bench_models

__all__ = ["LayerResult", "ModelResult", "bench_layers", "bench_models"]
