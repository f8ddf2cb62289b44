"""Reports: Markdown tables (mean ± std, paper layout) and PNG figures."""

from normlab.report.figures import (
    accuracy_figure,
    bin_gates_figure,
    iebn_gates_figure,
    switch_ratios_figure,
)
from normlab.report.tables import markdown_table, mean_std

__all__ = [
    "accuracy_figure",
    "bin_gates_figure",
    "iebn_gates_figure",
    "markdown_table",
    "mean_std",
    "switch_ratios_figure",
]
