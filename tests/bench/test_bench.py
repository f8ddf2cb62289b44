"""The benchmark harness runs, reports ratios to torch BatchNorm2d and renders tables."""

import json
import math
import platform

import pytest
import torch

import normlab
from normlab.bench.cli import main
from normlab.bench.layers import BASELINE, LayerResult, bench_layers, bytes_moved
from normlab.bench.measure import (
    Timing,
    dram_gbps,
    keep_freed_memory,
    peak_bandwidth_gbps,
    saved_bytes,
)
from normlab.bench.report import layers_table


def test_layer_bench_reports_ratios_against_torch_batchnorm():
    results = bench_layers([(4, 8, 4, 4)], ["bn", "sn"], repeats=2, warmup=1)
    assert [(r.layer, r.backend) for r in results] == [
        (BASELINE, "aten"), ("bn", "fused"), ("bn", "reference"), ("sn", "fused"),
        ("sn", "reference"),
    ]
    base = results[0]
    assert base.step_ratio == 1.0 and base.forward_ratio == 1.0 and base.saved_ratio == 1.0
    for r in results:
        assert r.step_ms > 0 and r.peak_ratio >= 0
        assert math.isfinite(r.step_ratio) and r.step_ratio > 0
    table = layers_table(results)
    assert "| sn | fused |" in table and "(4, 8, 4, 4)" in table


def test_fused_layers_save_about_what_batchnorm_saves():
    x = torch.randn(16, 8, 16, 16, requires_grad=True)
    base = saved_bytes(lambda: torch.nn.BatchNorm2d(8)(x))
    for name in normlab.list_norms():
        layer = normlab.create_norm(name, 8)
        assert saved_bytes(lambda layer=layer: layer(x)) <= 1.1 * base, name


def test_timing_and_traffic_helpers():
    t = Timing([1.0, 2.0, 3.0, 4.0, 100.0])
    assert t.median == 3.0 and t.spread > 0
    assert bytes_moved(torch.empty(2, 3, dtype=torch.float16)) == 8 * 6 * 2


def test_paired_ratios_cancel_a_slow_round():
    base = Timing([1.0, 10.0, 1.0, 1.0])
    twice = Timing([2.0, 20.0, 2.0, 2.0])
    ratio = twice.ratio_to(base)
    assert ratio.median == 2.0 and ratio.spread == 0.0
    with pytest.raises(ValueError):
        twice.ratio_to(Timing([1.0]))


def test_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["layers", "--shapes", "4,4,2,2", "--repeats", "1", "--norms", "iebn",
                 "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert {r["layer"] for r in rows} == {BASELINE, "iebn"}
    assert "| iebn | fused |" in capsys.readouterr().out


def test_model_bench_uses_a_torch_batchnorm_network_as_baseline():
    from normlab.bench.models import BASELINE, bench_models
    from normlab.bench.report import models_table

    results = bench_models("resnet20", ["bn", "bin"], batch_size=2, image_size=8,
                           num_classes=3, repeats=1, warmup=0)
    assert [r.norm for r in results] == [BASELINE, "bn", "bin"]
    assert results[0].step_ratio == 1.0
    assert "| bin |" in models_table(results)


def test_inference_bench_rows_and_folds():
    from normlab.bench.inference import BASELINE, HARDENED, bench_inference
    from normlab.bench.report import inference_table

    results = bench_inference("resnet20", ["bn", "sn"], batch_size=2, image_size=8,
                              num_classes=3, repeats=1, warmup=0)
    rows = {(r.norm, r.fused): r for r in results}
    assert list(rows) == [(BASELINE, False), ("bn", False), ("bn", True), ("sn", False),
                          ("sn", True), (HARDENED, False), (HARDENED, True)]
    assert rows[(BASELINE, False)].ratio == 1.0
    layers = rows[("bn", False)].norm_layers
    assert rows[("bn", True)].folded == rows[(HARDENED, True)].folded == layers > 0
    assert rows[("sn", True)].folded == 0  # soft ratios read the sample: nothing folds
    assert f"| {HARDENED} | yes |" in inference_table(results)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_cpu_bench_keeps_freed_memory_unless_asked_not_to(capsys):
    assert keep_freed_memory() is True
    args = ["models", "--model", "resnet20", "--norms", "bn", "--repeats", "1",
            "--batch-size", "2"]
    assert main(args) == 0
    assert "malloc keeps freed memory" in capsys.readouterr().out
    assert main([*args, "--default-malloc"]) == 0
    assert "malloc keeps freed memory" not in capsys.readouterr().out


def test_peak_bandwidth_from_memory_clock_and_bus_width():
    # an RTX 4090: 10.501 GHz effective memory clock (kHz as CUDA reports it), 384-bit bus
    assert dram_gbps(10_501_000, 384) == pytest.approx(1008.096)
    assert peak_bandwidth_gbps(torch.device("cpu")) is None


def test_gpu_table_shows_bandwidth_as_a_share_of_peak():
    row = LayerResult((8, 4, 2, 2), "bn", "fused", 1.0, 2.0, 1.0, 1.0, 0.0, 1.0, 1.0,
                      step_gbps=3000.0, step_peak_fraction=0.75)
    table = layers_table([row])
    assert "GB/s (of peak)" in table and "| 3000 (75%) |" in table


@pytest.mark.gpu
def test_cuda_bench_reports_achieved_bandwidth_against_peak():
    results = bench_layers([(32, 64, 32, 32)], ["bn"], repeats=2, warmup=1, device="cuda")
    for r in results:
        assert r.step_gbps > 0
        assert 0 < r.step_peak_fraction < 1.5
