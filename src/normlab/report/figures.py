"""PNG figures: accuracy per setting and norm, and what SN, BIN and IEBN learned per layer.

Figures are drawn with matplotlib's non-interactive Agg backend.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "accuracy_figure",
    "bin_gates_figure",
    "iebn_gates_figure",
    "learning_curves_figure",
    "style_images_figure",
    "style_losses_figure",
    "switch_ratios_figure",
]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def accuracy_figure(
    cells: Mapping[str, Mapping[str, Sequence[float]]],
    norms: Sequence[str],
    settings: Sequence[str],
    path: str | Path,
    *,
    titles: Mapping[str, str] | None = None,
    ylabel: str = "test accuracy (%)",
    paper: Mapping[str, Mapping[str, float]] | None = None,
    percent_axis: bool = True,
) -> Path:
    """Grouped bars: one group per setting, one bar per norm (``cells[setting][norm]``), mean
    with std error bars; ``paper[setting][norm]`` values are drawn as black diamonds.

    ``percent_axis`` puts the y axis at 0-100; otherwise it fits the values.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(settings) + 2), 4))
    width = 0.8 / max(len(norms), 1)
    marked = False
    for i, norm in enumerate(norms):
        means, errors = [], []
        for setting in settings:
            values = cells.get(setting, {}).get(norm, [])
            means.append(statistics.fmean(values) if values else 0.0)
            errors.append(statistics.pstdev(values) if len(values) > 1 else 0.0)
        positions = [s + (i - (len(norms) - 1) / 2) * width for s in range(len(settings))]
        ax.bar(positions, means, width, yerr=errors, label=norm, capsize=2)
        for position, setting in zip(positions, settings):
            value = (paper or {}).get(setting, {}).get(norm)
            if value is not None:
                ax.plot(position, value, "kD", markersize=4,
                        label=None if marked else "paper")
                marked = True
    ax.set_xticks(range(len(settings)))
    ax.set_xticklabels([(titles or {}).get(s, s) for s in settings])
    ax.set_ylabel(ylabel)
    if percent_axis:
        ax.set_ylim(0, 100)
    ax.legend(ncol=min(len(norms) + marked, 8), fontsize=8, loc="lower center",
              bbox_to_anchor=(0.5, 1.0), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def switch_ratios_figure(layers: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Stacked bars of SN's mean and variance ratios per layer (``norm_summary`` records)."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 0.35 * len(layers) + 2), 5), sharex=True)
    names = layers[0]["normalizers"] if layers else []
    for ax, key, title in zip(axes, ("mean_ratios", "var_ratios"), ("mean", "variance")):
        bottom = [0.0] * len(layers)
        for k, name in enumerate(names):
            heights = [layer[key][k] for layer in layers]
            ax.bar(range(len(layers)), heights, bottom=bottom, label=name.upper())
            bottom = [b + h for b, h in zip(bottom, heights)]
        ax.set_ylabel(f"{title} ratio")
        ax.set_ylim(0, 1)
    axes[0].legend(ncol=len(names), fontsize=8)
    axes[1].set_xlabel("SN layer (input → output)")
    return _save(fig, path)


def bin_gates_figure(layers: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Box plot of BIN's gate values rho per layer (1 = BN, 0 = IN)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(layers) + 2), 3.5))
    ax.boxplot([layer["gate_values"] for layer in layers], showfliers=True)
    ax.set_xticks(range(1, len(layers) + 1))
    ax.set_xticklabels([str(i) for i in range(len(layers))], fontsize=7)
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("gate ρ (1 = BN, 0 = IN)")
    ax.set_xlabel("BIN layer (input → output)")
    return _save(fig, path)


def iebn_gates_figure(layers: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """IEBN's gate values delta per layer on a test batch: median, quartiles and range."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(layers) + 2), 3.5))
    stats = [layer["gate_values"] for layer in layers]
    xs = range(len(stats))
    ax.fill_between(xs, [s["min"] for s in stats], [s["max"] for s in stats], alpha=0.15,
                    label="min–max")
    ax.fill_between(xs, [s["q25"] for s in stats], [s["q75"] for s in stats], alpha=0.35,
                    label="quartiles")
    ax.plot(xs, [s["median"] for s in stats], marker="o", label="median")
    ax.axhline(0.2689, color="gray", linestyle="--", linewidth=1, label="init σ(−1)")
    ax.set_ylim(0, 1)
    ax.set_ylabel("gate δ")
    ax.set_xlabel("IEBN layer (input → output)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _smooth(values: Sequence[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def style_losses_figure(histories: Mapping[str, Sequence[Mapping[str, float]]],
                        path: str | Path) -> Path:
    """Content and style loss against the step, one curve per norm (moving average over a
    twentieth of the steps; log scale), as in the IEBN paper's Figs. 3 and 5."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key in zip(axes, ("content", "style")):
        for norm, history in histories.items():
            steps = [r["step"] for r in history]
            ax.plot(steps, _smooth([r[key] for r in history], max(1, len(history) // 20)),
                    label=norm)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(f"{key} loss")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _save(fig, path)


def style_images_figure(content: Any, style: Any, outputs: Mapping[str, Any],
                        path: str | Path) -> Path:
    """A grid: held-out content images (first row), then each norm's stylized versions;
    the style image at the top left. Images are ``(N, 3, H, W)`` tensors in [0, 1]."""
    plt = _pyplot()
    rows, cols = 1 + len(outputs), 1 + content.shape[0]
    fig, axes = plt.subplots(rows, cols, figsize=(1.8 * cols, 1.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes[0][0].imshow(style.permute(1, 2, 0).numpy())
    axes[0][0].set_title("style", fontsize=8)
    for j, image in enumerate(content, start=1):
        axes[0][j].imshow(image.permute(1, 2, 0).numpy())
    for i, (norm, images) in enumerate(outputs.items(), start=1):
        axes[i][0].text(0.5, 0.5, norm, ha="center", va="center", fontsize=11)
        for j, image in enumerate(images, start=1):
            axes[i][j].imshow(image.permute(1, 2, 0).numpy())
    return _save(fig, path)


def learning_curves_figure(curves: Mapping[str, Sequence[Sequence[float]]], path: str | Path,
                           *, ylabel: str = "test accuracy (%)") -> Path:
    """One line per label: the mean over seeds of a per-epoch metric (``curves[label]`` is
    one sequence per seed), with a band of ± one std; seeds cut to the shortest."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, seeds in curves.items():
        epochs = min((len(s) for s in seeds), default=0)
        if not epochs:
            continue
        columns = [[s[e] for s in seeds] for e in range(epochs)]
        means = [statistics.fmean(c) for c in columns]
        stds = [statistics.pstdev(c) if len(c) > 1 else 0.0 for c in columns]
        xs = range(1, epochs + 1)
        ax.plot(xs, means, marker="o", markersize=3, label=label)
        ax.fill_between(xs, [m - d for m, d in zip(means, stds)],
                        [m + d for m, d in zip(means, stds)], alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
