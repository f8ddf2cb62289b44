"""Reports: Markdown tables (mean ± std, paper layout), PNG figures, experiment reports, and
the ``demo`` and ``style`` commands' reports."""

from normlab.report.demo import build_report
from normlab.report.experiment import CellResult, collect_results, experiment_report
from normlab.report.figures import accuracy_figure, draw_norm_figure, learned_figures
from normlab.report.style import style_report
from normlab.report.tables import markdown_table, mean_std

__all__ = [
    "CellResult",
    "accuracy_figure",
    "build_report",
    "collect_results",
    "draw_norm_figure",
    "experiment_report",
    "learned_figures",
    "markdown_table",
    "mean_std",
    "style_report",
]
