"""PNG figures: accuracy per setting and norm, what each norm learned per layer, and how
SN's ratios per network component moved over training.

A norm's figure is data it registers (:class:`~normlab.norms.FigureSpec`); the drawers of
each figure kind live here. Figures are drawn with matplotlib's non-interactive Agg backend.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from normlab.norms.registry import FigureSpec, canonical_norm, list_norms, norm_figure

__all__ = [
    "DRAWERS",
    "accuracy_figure",
    "draw_norm_figure",
    "learned_figures",
    "learning_curves_figure",
    "ratio_dynamics_figure",
    "style_images_figure",
    "style_losses_figure",
]


def _pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend."""
    import matplotlib  # optional: the plotting dependency, loaded when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # optional: as above

    return plt


def _save(fig: Any, path: str | Path) -> Path:
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


def _per_layer_axes(
    layers: Sequence[Mapping[str, Any]], panels: int = 1, height: float = 3.5
) -> tuple[Any, list[Any]]:
    """A figure as wide as there are layers, with ``panels`` stacked axes sharing x."""
    plt = _pyplot()
    width = max(6.0, 0.35 * len(layers) + 2)
    if panels == 1:
        fig, ax = plt.subplots(figsize=(width, height))
        return fig, [ax]
    fig, axes = plt.subplots(panels, 1, figsize=(width, height), sharex=True)
    return fig, list(axes)


def _ratios(spec: FigureSpec, layers: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """One panel per key: each layer's ratios, stacked over the names in ``spec.parts``
    (SN's mean and variance ratios, as in the SN paper's Fig. 5)."""
    fig, axes = _per_layer_axes(layers, len(spec.keys), 2.5 * len(spec.keys))
    names = layers[0][spec.parts] if layers else []
    for ax, key, label in zip(axes, spec.keys, spec.labels):
        bottom = [0.0] * len(layers)
        for k, name in enumerate(names):
            heights = [layer[key][k] for layer in layers]
            ax.bar(range(len(layers)), heights, bottom=bottom, label=name.upper())
            bottom = [b + h for b, h in zip(bottom, heights)]
        ax.set_ylabel(label)
        ax.set_ylim(*spec.ylim)
    axes[0].legend(ncol=len(names), fontsize=8)
    axes[-1].set_xlabel(spec.xlabel)
    return _save(fig, path)


def _boxes(spec: FigureSpec, layers: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """A box plot of each layer's values (BIN's gates rho)."""
    fig, (ax,) = _per_layer_axes(layers)
    ax.boxplot([layer[spec.keys[0]] for layer in layers], showfliers=True)
    ax.set_xticks(range(1, len(layers) + 1))
    ax.set_xticklabels([str(i) for i in range(len(layers))], fontsize=7)
    ax.set_ylim(*spec.ylim)
    ax.set_ylabel(spec.labels[0])
    ax.set_xlabel(spec.xlabel)
    return _save(fig, path)


def _quantiles(spec: FigureSpec, layers: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Median, quartile and min-max bands of each layer's value statistics (IEBN's gate
    values on a test batch), with ``spec.reference`` as a dashed line."""
    fig, (ax,) = _per_layer_axes(layers)
    stats = [layer[spec.keys[0]] for layer in layers]
    xs = range(len(stats))
    ax.fill_between(xs, [s["min"] for s in stats], [s["max"] for s in stats], alpha=0.15,
                    label="min–max")
    ax.fill_between(xs, [s["q25"] for s in stats], [s["q75"] for s in stats], alpha=0.35,
                    label="quartiles")
    ax.plot(xs, [s["median"] for s in stats], marker="o", label="median")
    if spec.reference is not None:
        value, label = spec.reference
        ax.axhline(value, color="gray", linestyle="--", linewidth=1, label=label)
    ax.set_ylim(*spec.ylim)
    ax.set_ylabel(spec.labels[0])
    ax.set_xlabel(spec.xlabel)
    ax.legend(fontsize=8)
    return _save(fig, path)


DRAWERS = {"ratios": _ratios, "boxes": _boxes, "quantiles": _quantiles}
"""Figure kinds (:attr:`FigureSpec.kind`) -> drawer, in the order reports show them."""


def draw_norm_figure(
    spec: FigureSpec, layers: Sequence[Mapping[str, Any]], path: str | Path
) -> Path | None:
    """Draw a norm's figure (its registered :class:`~normlab.norms.FigureSpec`) of the
    ``norm_summary`` records that hold the figure's keys (other layers of the model are
    left out); ``None`` (nothing drawn) when no record does (IEBN's gate values need
    ``norm_summary``'s inputs)."""
    if spec.kind not in DRAWERS:
        raise ValueError(f"unknown figure kind {spec.kind!r}; valid: {', '.join(DRAWERS)}")
    layers = [layer for layer in layers if all(key in layer for key in spec.keys)]
    if not layers:
        return None
    return DRAWERS[spec.kind](spec, layers, path)


def learned_figures(
    summaries: Mapping[str, Sequence[Mapping[str, Any]]], folder: str | Path
) -> list[str]:
    """Draw what each norm learned into ``folder``: ``summaries`` maps a norm's name (or
    alias) to its layers' ``norm_summary`` records; each norm with a registered figure
    gets its ``spec.file``. Figures come in the order of :data:`DRAWERS`' kinds, then of
    the registry. Returns the file names drawn."""
    specs = []
    for norm, layers in summaries.items():
        spec = norm_figure(norm)
        if spec is not None:
            specs.append((list(DRAWERS).index(spec.kind), list_norms().index(canonical_norm(norm)),
                          spec, layers))
    drawn = []
    for *_, spec, layers in sorted(specs, key=lambda item: item[:2]):
        if draw_norm_figure(spec, layers, Path(folder) / spec.file) is not None:
            drawn.append(spec.file)
    return drawn


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


RATIO_PARTS = ("IN", "LN", "BN")
"""The normalizers of SN's ratios, in the order of their records (SN Eqn. 3)."""


def ratio_dynamics_figure(
    records: Sequence[Mapping[str, Mapping[str, Sequence[float]]]], path: str | Path
) -> Path:
    """SN's ratios per network component over training, as in the SN paper's Figs. 10(b)
    and 11: one column of panels per component (backbone, FPN, box head, mask head, in the
    order they first appear), the mean ratios on top and the variance ratios below, a line
    per normalizer (IN, LN, BN) against the epoch; the y axis (shared) fits the values, the
    dashed line is the ratios' start, 1/3 each (short runs move them little).

    Args:
        records: One entry per epoch: ``records[e][component] = {"mean": [in, ln, bn],
            "var": [in, ln, bn]}`` (a detector's ``sn_ratios``); a component missing from an
            epoch's record leaves a gap.
        path: The PNG to write.
    """
    plt = _pyplot()
    components = list(dict.fromkeys(name for record in records for name in record))
    panels = max(len(components), 1)
    fig, axes = plt.subplots(2, panels, figsize=(3.2 * panels + 1, 5), sharex=True,
                             sharey=True, squeeze=False)
    epochs = range(1, len(records) + 1)
    for column, component in enumerate(components):
        for row, key in enumerate(("mean", "var")):
            ax = axes[row][column]
            for k, part in enumerate(RATIO_PARTS):
                ys = [r[component][key][k] if component in r else float("nan") for r in records]
                ax.plot(epochs, ys, marker="o", markersize=3, label=part)
            ax.axhline(1 / len(RATIO_PARTS), color="gray", linestyle="--", linewidth=0.8)
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(component.replace("_", " "))
            if column == 0:
                ax.set_ylabel(f"{key} ratio")
            if row == 1:
                ax.set_xlabel("epoch")
                ax.locator_params(axis="x", integer=True)
    axes[0][0].legend(fontsize=8)
    return _save(fig, path)
