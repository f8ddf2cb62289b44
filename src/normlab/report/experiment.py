"""The report of a named experiment: our table in the paper's layout, the paper's, a figure.

Everything is read back from the sweep's run folders (``summary.json``, ``metrics.jsonl``),
so a report can be rebuilt at any time, also while a sweep is still running; cells without a
finished run show ``–`` and the report says how many runs are missing. A table whose columns
are metrics of one run per row (:attr:`Experiment.metrics`, e.g. AP, AP.5, ... of a
detector) shows each of them; runs whose metrics rows record SN ratios per component
(``sn_ratios``, a detector's) also get the ratios' course over the epochs drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from normlab.experiments.registry import Experiment
from normlab.experiments.sweep import cell_folder
from normlab.norms import norm_figure, norm_summary
from normlab.report.figures import (
    accuracy_figure,
    draw_norm_figure,
    learning_curves_figure,
    ratio_dynamics_figure,
)
from normlab.report.tables import markdown_table
from normlab.train import Builders, load_config, load_run
from normlab.train.run_folder import CONFIG, RunFolder, write_text_atomic

__all__ = ["CellResult", "collect_results", "experiment_report"]

REPORT, FIGURE, CURVES = "report.md", "figure.png", "curves.png"
EPOCH_TEXT = {"last": "last epoch", "best": "best epoch (as the paper's authors report it)"}


@dataclass
class CellResult:
    """The finished runs of one cell: the metric per seed, and runs that diverged.

    Attributes:
        values: The cell's number per finished seed (with :attr:`Experiment.metrics`: the
            first column's).
        seeds: The finished seeds, in the order of ``values``.
        diverged: Seeds that stopped on a non-finite loss.
        metrics: With :attr:`Experiment.metrics`: column label -> its number per finished
            seed (a seed whose ``summary.json`` lacks the key, or records NaN -- COCO AP of
            a size no ground truth has -- is left out there).
    """

    values: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    diverged: list[int] = field(default_factory=list)
    metrics: dict[str, list[float]] = field(default_factory=dict)


def _seed_of(folder: Path) -> int | None:
    name = folder.name
    return int(name[4:]) if name.startswith("seed") and name[4:].isdigit() else None


def collect_results(
    experiment: Experiment, *, scale: str, out: str | Path
) -> dict[tuple[str, str], CellResult]:
    """The metric of every completed run under ``out``, per cell (in the paper's unit:
    top-1 error or accuracy, %, of the last epoch or the best one, as the paper reports;
    with :attr:`Experiment.metrics`, each column's ``summary.json`` entry as recorded)."""
    results = {}
    for cell, _, _ in experiment.runs(scale):
        result = CellResult()
        folder = cell_folder(out, experiment, scale, cell)
        runs = [(seed, p) for p in folder.glob("seed*") if (seed := _seed_of(p)) is not None]
        for seed, run in sorted(runs):
            summary = RunFolder(run).read_summary()
            if summary.get("status") == "completed":
                result.seeds.append(seed)
                if experiment.metrics:
                    for column, key in experiment.metrics.items():
                        value = summary.get(key)
                        if value is not None and not math.isnan(value):
                            result.metrics.setdefault(column, []).append(float(value))
                    continue
                acc = float(summary["final_acc" if experiment.epoch == "last" else "best_acc"])
                result.values.append(100.0 - acc if experiment.metric == "error" else acc)
            elif summary.get("status") == "stopped_nonfinite_loss":
                result.diverged.append(seed)
        if experiment.metrics:
            result.values = list(result.metrics.get(experiment.columns[0], []))
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
                found.setdefault(str(kind), []).append(experiment.cell_label(cell))
                break
    return found


def _entries(
    experiment: Experiment, results: dict[tuple[str, str], CellResult]
) -> dict[tuple[str, str], list[float] | str]:
    """Each (row, column) of the table that has runs: its numbers per seed, or
    ``"diverged"`` when it has none and a run diverged."""
    entries: dict[tuple[str, str], list[float] | str] = {}
    for (row, column), result in results.items():
        shown = ({label: result.metrics.get(label, []) for label in experiment.columns}
                 if experiment.metrics else {column: result.values})
        for label, values in shown.items():
            entries[(row, label)] = "diverged" if not values and result.diverged else values
    return entries


def _ours_cells(
    experiment: Experiment, entries: dict[tuple[str, str], list[float] | str]
) -> dict[str, dict[str, list[float] | str]]:
    """``markdown_table``'s ``cells[column][row]``; ``""`` where nothing runs."""
    return {column: {row: entries.get((row, column), "") for row in experiment.rows}
            for column in experiment.columns}


def _first_seeds(
    experiment: Experiment,
    results: dict[tuple[str, str], CellResult],
    *,
    scale: str,
    out: str | Path,
) -> list[tuple[str, int, Path]]:
    """``(cell label, seed, run folder)`` of the first finished seed of every cell that
    has one (the run a report's per-cell figures are drawn from)."""
    return [
        (experiment.cell_label(cell), result.seeds[0],
         cell_folder(out, experiment, scale, cell) / f"seed{result.seeds[0]}")
        for cell, result in results.items() if result.seeds
    ]


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
    for label, seed, run_dir in _first_seeds(experiment, results, scale=scale, out=out):
        spec = norm_figure(load_config(run_dir / CONFIG).model.norm)
        if spec is None or spec.needs_inputs:  # the report has no input batch
            continue
        model = load_run(run_dir, builders=builders).model
        name = f"learned-{run_dir.parent.name}.png"
        if draw_norm_figure(spec, norm_summary(model), run_dir.parent.parent / name) is None:
            continue
        lines.append(f"**{label}** (seed {seed}): {spec.caption}.\n\n![{label}]({name})\n")
    return lines


def _ratio_figures(
    experiment: Experiment,
    results: dict[tuple[str, str], CellResult],
    *,
    scale: str,
    out: str | Path,
) -> list[str]:
    """The SN ratios per component over the epochs (SN paper Figs. 10b-11) of every cell
    whose metrics rows record them (``sn_ratios``), from its first finished seed
    (``ratios-<cell>.png``; Markdown)."""
    lines = []
    for label, seed, run_dir in _first_seeds(experiment, results, scale=scale, out=out):
        records = [row.get("sn_ratios") or {} for row in RunFolder(run_dir).metrics()]
        if not any(records):
            continue
        name = f"ratios-{run_dir.parent.name}.png"
        ratio_dynamics_figure(records, run_dir.parent.parent / name)
        lines.append(f"**{label}** (seed {seed}): the mean and variance ratios (IN, LN, BN) "
                     f"averaged over each component's SN layers, after every epoch."
                     f"\n\n![{label}]({name})\n")
    return lines


def _curves(
    experiment: Experiment,
    results: dict[tuple[str, str], CellResult],
    *,
    scale: str,
    out: str | Path,
) -> dict[str, list[list[float]]]:
    """Each cell's per-epoch test result, one list per finished seed: ``test_acc``, or
    the metrics row key of the first of :attr:`Experiment.metrics` (its ``summary.json``
    key without ``final_``, e.g. ``box_ap``)."""
    key = (next(iter(experiment.metrics.values())).removeprefix("final_")
           if experiment.metrics else "test_acc")
    return {
        f"{row} / {column}" if len(experiment.run_columns) > 1 else row: [
            [r[key] for r in RunFolder(
                cell_folder(out, experiment, scale, (row, column)) / f"seed{seed}").metrics()]
            for seed in result.seeds
        ]
        for (row, column), result in results.items()
    }


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
    finished seed; ``builders`` rebuild its network, for tests), and for every cell whose
    metrics rows record SN ratios per component, their course over the epochs
    (``ratios-<cell>.png``).
    """
    folder = Path(out) / experiment.name / scale
    folder.mkdir(parents=True, exist_ok=True)
    results = collect_results(experiment, scale=scale, out=out)
    entries = _entries(experiment, results)
    better = "min" if experiment.metric == "error" else "max"
    unit = experiment.unit or f"top-1 {experiment.metric} (%)"
    epoch = "" if experiment.metrics else f", {EPOCH_TEXT[experiment.epoch]}"
    lines = [
        f"# {experiment.name}: {experiment.title}",
        "",
        f"{experiment.source}. Scale: **{scale}**"
        + (" (CPU-sized variants on built-in or sample data: compare the ordering of the "
           "columns, not the values, with the paper)." if scale == "tiny"
           else " (the paper's recipe)."),
        "",
        f"## normlab: {unit}{epoch}, mean ± std over seeds",
        "",
        markdown_table(_ours_cells(experiment, entries), experiment.rows, experiment.columns,
                       best=better, best_within=experiment.best_within),
    ]
    seed_counts = sorted({len(r.seeds) for r in results.values()})
    lines.append(f"Seeds finished per cell: {' or '.join(map(str, seed_counts)) or 'none yet'}.")
    for kind, cells in sorted(_eval_statistics(experiment, scale=scale, out=out).items()):
        lines.append(f"Evaluated with {EVAL_STATISTICS_TEXT.get(kind, kind)}: {_listing(cells)}.")
    if seeds is not None:
        missing = [
            f"{experiment.cell_label(cell)} seed {seed}"
            for cell, result in results.items()
            for seed in seeds
            if seed not in result.seeds and seed not in result.diverged
        ]
        if missing:
            lines.append(f"Missing runs ({len(missing)}): {_listing(missing)}.")
    diverged = [f"{experiment.cell_label(cell)} seed {s}"
                for cell, res in results.items() for s in res.diverged]
    if diverged:
        lines.append(f"Diverged (non-finite loss): {'; '.join(diverged)}.")
    skipped = [experiment.cell_label((r, c)) for r in experiment.rows
               for c in experiment.run_columns
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
    for (row, column), values in entries.items():
        by_row.setdefault(row, {})[column] = [] if isinstance(values, str) else values
    paper: dict[str, dict[str, float]] = {}
    for (row, column), text in experiment.paper.items() if scale == "full" else ():
        if (value := _number(text)) is not None:
            paper.setdefault(row, {})[column] = value
    accuracy_figure(by_row, experiment.columns, experiment.rows, folder / FIGURE,
                    ylabel=unit, paper=paper, percent_axis=experiment.metric == "accuracy")
    lines += ["", f"![{experiment.name}]({FIGURE})", ""]
    if experiment.curves:
        curves = _curves(experiment, results, scale=scale, out=out)
        shown, ylabel = ((experiment.columns[0], f"{experiment.columns[0]} ({unit})")
                         if experiment.metrics else ("Test accuracy", "test accuracy (%)"))
        learning_curves_figure(curves, folder / CURVES, ylabel=ylabel)
        lines += [f"## {shown} per epoch (mean ± std over seeds)", "",
                  f"![curves]({CURVES})", ""]
    learned = _learned_figures(experiment, results, scale=scale, out=out, builders=builders)
    if learned:
        lines += ["## What the adaptive norms learned", "", *learned]
    ratios = _ratio_figures(experiment, results, scale=scale, out=out)
    if ratios:
        lines += ["## SN ratios per component over training (SN paper Figs. 10-11)", "",
                  *ratios]
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
