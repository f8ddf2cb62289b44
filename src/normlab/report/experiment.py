"""The report of a named experiment: our table in the paper's layout, the paper's, a figure.

Everything is read back from the sweep's run folders (``summary.json``), so a report can be
rebuilt at any time, also while a sweep is still running; cells without a finished run show
``–`` and the report says how many runs are missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from normlab.experiments.registry import Experiment
from normlab.experiments.sweep import cell_folder
from normlab.norms import norm_figure, norm_summary
from normlab.report.figures import accuracy_figure, draw_norm_figure, learning_curves_figure
from normlab.report.tables import markdown_table
from normlab.train import Builders, load_config, load_run
from normlab.train.run_folder import CONFIG, RunFolder, write_text_atomic

__all__ = ["CellResult", "collect_results", "experiment_report"]

REPORT, FIGURE, CURVES = "report.md", "figure.png", "curves.png"
EPOCH_TEXT = {"last": "last epoch", "best": "best epoch (as the paper's authors report it)"}


@dataclass
class CellResult:
    """The finished runs of one cell: the metric per seed, and runs that diverged."""

    values: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    diverged: list[int] = field(default_factory=list)


def _seed_of(folder: Path) -> int | None:
    name = folder.name
    return int(name[4:]) if name.startswith("seed") and name[4:].isdigit() else None


def collect_results(
    experiment: Experiment, *, scale: str, out: str | Path
) -> dict[tuple[str, str], CellResult]:
    """The metric of every completed run under ``out``, per cell (in the paper's unit:
    top-1 error or accuracy, %, of the last epoch or the best one, as the paper reports)."""
    results = {}
    for cell, _, _ in experiment.runs(scale):
        result = CellResult()
        folder = cell_folder(out, experiment, scale, cell)
        runs = [(seed, p) for p in folder.glob("seed*") if (seed := _seed_of(p)) is not None]
        for seed, run in sorted(runs):
            summary = RunFolder(run).read_summary()
            if summary.get("status") == "completed":
                acc = float(summary["final_acc" if experiment.epoch == "last" else "best_acc"])
                result.values.append(100.0 - acc if experiment.metric == "error" else acc)
                result.seeds.append(seed)
            elif summary.get("status") == "stopped_nonfinite_loss":
                result.diverged.append(seed)
        results[cell] = result
    return results


EVAL_STATISTICS_TEXT = {
    "moving_average": "the norms' moving-average statistics",
    "batch_average": "the SN paper's batch-average statistics (eval.statistics)",
}


def _eval_statistics(
    experiment: Experiment, *, scale: str, out: str | Path
) -> dict[str, list[str]]:
    """Which normalization statistics each cell's runs were evaluated with
    (``summary.json``'s ``eval_statistics``), as statistics -> cell labels."""
    found: dict[str, list[str]] = {}
    for cell, _, _ in experiment.runs(scale):
        for run in sorted(cell_folder(out, experiment, scale, cell).glob("seed*")):
            kind = RunFolder(run).read_summary().get("eval_statistics")
            if kind is not None:
                found.setdefault(str(kind), []).append(f"{cell[0]} / {cell[1]}")
                break
    return found


def _ours_cells(
    experiment: Experiment, results: dict[tuple[str, str], CellResult]
) -> dict[str, dict[str, list[float] | str]]:
    cells: dict[str, dict[str, list[float] | str]] = {}
    for (row, column), result in results.items():
        value: list[float] | str = result.values
        if not result.values and result.diverged:
            value = "diverged"
        cells.setdefault(column, {})[row] = value
    for row in experiment.rows:
        for column in experiment.columns:
            if (row, column) not in results:
                cells.setdefault(column, {})[row] = ""
    return cells


def _learned_figures(
    experiment: Experiment,
    results: dict[tuple[str, str], CellResult],
    *,
    scale: str,
    out: str | Path,
    builders: Builders | None,
) -> list[str]:
    """Figures of what each cell's norm learned, from its first finished seed (Markdown):
    the figure the norm registered, when its records hold what the figure draws."""
    lines = []
    for cell, result in results.items():
        if not result.seeds:
            continue
        run_dir = cell_folder(out, experiment, scale, cell) / f"seed{result.seeds[0]}"
        spec = norm_figure(load_config(run_dir / CONFIG).model.norm)
        if spec is None or spec.needs_inputs:  # the report has no input batch
            continue
        model = load_run(run_dir, builders=builders).model
        name = f"learned-{run_dir.parent.name}.png"
        if draw_norm_figure(spec, norm_summary(model), run_dir.parent.parent / name) is None:
            continue
        lines.append(f"**{cell[0]} / {cell[1]}** (seed {result.seeds[0]}): "
                     f"{spec.caption}.\n\n![{cell[0]} / {cell[1]}]({name})\n")
    return lines


def experiment_report(
    experiment: Experiment,
    *,
    scale: str,
    out: str | Path,
    seeds: Sequence[int] | None = None,
    builders: Builders | None = None,
) -> Path:
    """Write ``report.md`` and ``figure.png`` for ``experiment`` at ``scale``; return the
    report's path (``OUT/<experiment>/<scale>/report.md``).

    ``seeds`` (the ones the sweep was asked for) lets the report count missing runs. For
    every cell trained with a norm that registered a figure (SN's ratios, BIN's gates),
    the report also draws what the layers learned (``learned-<cell>.png``, from the first
    finished seed; ``builders`` rebuild its network, for tests).
    """
    folder = Path(out) / experiment.name / scale
    folder.mkdir(parents=True, exist_ok=True)
    results = collect_results(experiment, scale=scale, out=out)
    better = "min" if experiment.metric == "error" else "max"
    unit = f"top-1 {experiment.metric} (%)"
    lines = [
        f"# {experiment.name}: {experiment.title}",
        "",
        f"{experiment.source}. Scale: **{scale}**"
        + (" (CPU-sized variants on built-in or sample data: compare the ordering of the "
           "columns, not the values, with the paper)." if scale == "tiny"
           else " (the paper's recipe)."),
        "",
        f"## normlab: {unit}, {EPOCH_TEXT[experiment.epoch]}, mean ± std over seeds",
        "",
        markdown_table(_ours_cells(experiment, results), experiment.rows, experiment.columns,
                       best=better, best_within=experiment.best_within),
    ]
    seed_counts = sorted({len(r.values) for r in results.values()})
    lines.append(f"Seeds per cell: {', '.join(map(str, seed_counts)) or 'none yet'}.")
    for kind, cells in sorted(_eval_statistics(experiment, scale=scale, out=out).items()):
        lines.append(f"Evaluated with {EVAL_STATISTICS_TEXT.get(kind, kind)}: {_listing(cells)}.")
    if seeds is not None:
        missing = [
            f"{row} / {column} seed {seed}"
            for (row, column), result in results.items()
            for seed in seeds
            if seed not in result.seeds and seed not in result.diverged
        ]
        if missing:
            lines.append(f"Missing runs ({len(missing)}): {_listing(missing)}.")
    diverged = [f"{r} / {c} seed {s}" for (r, c), res in results.items() for s in res.diverged]
    if diverged:
        lines.append(f"Diverged (non-finite loss): {'; '.join(diverged)}.")
    skipped = [f"{r} / {c}" for r in experiment.rows for c in experiment.columns
               if (r, c) in experiment.cells and (r, c) not in results]
    if skipped:
        lines.append(f"Not run at this scale (see the notes): {_listing(skipped)}.")
    if experiment.paper:
        paper_cells: dict[str, dict[str, str]] = {}
        for (row, column), text in experiment.paper.items():
            paper_cells.setdefault(column, {})[row] = text
        lines += ["", f"## The paper: {unit}", "",
                  markdown_table(paper_cells, experiment.rows, experiment.columns, best=None)]
    if experiment.notes:
        lines += ["", "## Notes", "", experiment.notes.strip()]
    by_row: dict[str, dict[str, list[float]]] = {}
    for (row, column), result in results.items():
        by_row.setdefault(row, {})[column] = result.values
    paper: dict[str, dict[str, float]] = {}
    for (row, column), text in experiment.paper.items() if scale == "full" else ():
        if (value := _number(text)) is not None:
            paper.setdefault(row, {})[column] = value
    accuracy_figure(by_row, experiment.columns, experiment.rows, folder / FIGURE,
                    ylabel=unit, paper=paper, percent_axis=experiment.metric == "accuracy")
    lines += ["", f"![{experiment.name}]({FIGURE})", ""]
    if experiment.curves:
        curves = {
            f"{row} / {column}" if len(experiment.columns) > 1 else row: [
                [r["test_acc"] for r in RunFolder(
                    cell_folder(out, experiment, scale, (row, column)) / f"seed{seed}").metrics()]
                for seed in result.seeds
            ]
            for (row, column), result in results.items()
        }
        learning_curves_figure(curves, folder / CURVES)
        lines += ["## Test accuracy per epoch (mean ± std over seeds)", "",
                  f"![curves]({CURVES})", ""]
    learned = _learned_figures(experiment, results, scale=scale, out=out, builders=builders)
    if learned:
        lines += ["## What the adaptive norms learned", "", *learned]
    path = folder / REPORT
    write_text_atomic("\n".join(lines), path)
    return path


def _listing(items: Sequence[str], limit: int = 12) -> str:
    """``"a; b; c"``, cut after ``limit`` items with how many more there are."""
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return "; ".join(items[:limit]) + more


def _number(text: str) -> float | None:
    head = text.split("±")[0].strip().rstrip("%")
    try:
        return float(head)
    except ValueError:
        return None
