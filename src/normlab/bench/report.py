"""Markdown tables of benchmark results."""

from __future__ import annotations

from collections.abc import Sequence

from normlab.bench.data import TORCHVISION, DataBenchResult
from normlab.bench.inference import InferenceResult
from normlab.bench.layers import LayerResult
from normlab.bench.models import ModelResult

__all__ = ["data_table", "inference_table", "layers_table", "models_table"]


def _bandwidth(r: LayerResult) -> str:
    if r.step_gbps is None:
        return ""
    if r.step_peak_fraction is None:
        return f"{r.step_gbps:.0f}"
    return f"{r.step_gbps:.0f} ({r.step_peak_fraction:.0%})"


def layers_table(results: Sequence[LayerResult]) -> str:
    """One Markdown table per shape: time, saved-bytes and peak-memory ratios to torch BN."""
    gbps = any(r.step_gbps is not None for r in results)
    lines: list[str] = []
    for shape in dict.fromkeys(r.shape for r in results):
        rows = [r for r in results if r.shape == shape]
        base = rows[0]
        lines += [
            f"**{tuple(shape)}** — torch BatchNorm2d: forward {base.forward_ms:.2f} ms, "
            f"forward+backward {base.step_ms:.2f} ms",
            "",
            "| layer | backend | forward × | fwd+bwd × | spread | saved × | peak × |"
            + (" GB/s (of peak) |" if gbps else ""),
            "|---|---|---|---|---|---|---|" + ("---|" if gbps else ""),
        ]
        for r in rows:
            lines.append(
                f"| {r.layer} | {r.backend} | {r.forward_ratio:.2f} | {r.step_ratio:.2f} | "
                f"±{r.step_spread:.0%} | {r.saved_ratio:.2f} | {r.peak_ratio:.2f} |"
                + (f" {_bandwidth(r)} |" if gbps else "")
            )
        lines.append("")
    return "\n".join(lines)


def models_table(results: Sequence[ModelResult]) -> str:
    """Training-step time per norm as a ratio to BN."""
    lines = [
        f"**{results[0].model}**, batch {results[0].batch_size}, one SGD training step",
        "",
        "| norm | step ms | × torch BN | spread |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r.norm} | {r.step_ms:.1f} | {r.step_ratio:.2f} | ±{r.step_spread:.0%} |"
        for r in results
    ]
    return "\n".join(lines) + "\n"


def inference_table(results: Sequence[InferenceResult]) -> str:
    """Eval forward time per norm, unfused and fused, as a ratio to the torch-BN network."""
    first = results[0]
    lines = [
        f"**{first.model}**, batch {first.batch_size}, eval forward; torch BatchNorm2d network "
        f"{first.forward_ms:.1f} ms",
        "",
        "| norm | fused | forward ms | × torch BN | spread | norm layers folded |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.norm} | {'yes' if r.fused else 'no'} | {r.forward_ms:.1f} | {r.ratio:.2f} | "
        f"±{r.spread:.0%} | {f'{r.folded} of {r.norm_layers}' if r.fused else ''} |"
        for r in results
    ]
    return "\n".join(lines) + "\n"


def _mib(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}"


def data_table(result: DataBenchResult) -> str:
    """Images/s, ratio to torchvision, peak memory and data wait of each data pipeline, and
    the index's memory on a folder of empty files."""
    r = result
    lines = [
        f"**{r.images} JPEGs** (median {r.median_image}, {r.mean_file_kib:.0f} KiB), preset "
        f"{r.preset} at {r.size}, batch {r.batch_size}, {r.workers} workers, {r.device}, "
        f"one epoch each in {r.rounds} alternating turns",
        "",
        "| pipeline | images/s | × torchvision | spread | peak RSS MiB (sum) | "
        "peak PSS MiB (sum) | data wait s | first batch s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {p.pipeline} | {p.images_per_s:.0f} | {p.ratio:.2f} | ±{p.spread:.0%} | "
        f"{_mib(p.peak_rss_mib)} | {_mib(p.peak_pss_mib)} | {p.data_wait_s:.1f} | "
        f"{p.first_batch_s:.1f} |"
        for p in r.pipelines
    ]
    lines += [""] + [
        f"{p.pipeline} / torchvision, per round: " + " ".join(f"{x:.2f}" for x in p.round_ratios)
        for p in r.pipelines
        if p.pipeline != TORCHVISION
    ]
    if r.index is not None:
        i = r.index
        lines += [
            "",
            f"Index of {i.files:,} empty files: arrays {i.index_mib:.1f} MiB, resident "
            f"+{i.rss_increase_mib:.1f} MiB (peak +{i.peak_increase_mib:.1f} MiB while "
            f"listing); torchvision ImageFolder: +{i.imagefolder_rss_increase_mib:.1f} MiB.",
        ]
    return "\n".join(lines) + "\n"
