"""Markdown tables of results aggregated over seeds."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

__all__ = ["markdown_table", "mean_std"]


def mean_std(values: Sequence[float], digits: int = 1) -> str:
    """``"m ± s"`` (population std over seeds), ``"m"`` for one value, ``"–"`` for none."""
    if not values:
        return "–"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.pstdev(values):.{digits}f}"


def markdown_table(
    cells: Mapping[str, Mapping[str, Sequence[float]]],
    rows: Sequence[str],
    columns: Sequence[str],
    *,
    row_header: str = "",
    column_titles: Mapping[str, str] | None = None,
    digits: int = 1,
    bold_best: bool = True,
) -> str:
    """A Markdown table of ``cells[column][row]`` value lists as mean ± std.

    With ``bold_best`` the highest mean of each column is set in bold.
    """
    titles = column_titles or {}
    lines = [
        "| " + " | ".join([row_header, *(titles.get(c, c) for c in columns)]) + " |",
        "|" + "---|" * (len(columns) + 1),
    ]
    best = {}
    for column in columns:
        means = {
            r: statistics.fmean(v) for r in rows if (v := cells.get(column, {}).get(r))
        }
        best[column] = max(means, key=means.get) if means else None
    for row in rows:
        entries = []
        for column in columns:
            text = mean_std(cells.get(column, {}).get(row, []), digits)
            entries.append(f"**{text}**" if bold_best and best[column] == row else text)
        lines.append("| " + " | ".join([row, *entries]) + " |")
    return "\n".join(lines) + "\n"
