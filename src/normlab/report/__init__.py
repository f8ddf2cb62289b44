"""Reports: Markdown tables (mean ± std, paper layout), PNG figures, experiment reports."""

from normlab.report.experiment import CellResult, collect_results, experiment_report
from normlab.report.figures import (
    accuracy_figure,
    bin_gates_figure,
    iebn_gates_figure,
    switch_ratios_figure,
)
from normlab.report.tables import markdown_table, mean_std

__all__ = [
    "CellResult",
    "accuracy_figure",
    "bin_gates_figure",
    "collect_results",
    "experiment_report",
    "iebn_gates_figure",
    "markdown_table",
    "mean_std",
    "switch_ratios_figure",
]
