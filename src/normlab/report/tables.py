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
    cells: Mapping[str, Mapping[str, Sequence[float] | str]],
    rows: Sequence[str],
    columns: Sequence[str],
    *,
    row_header: str = "",
    column_titles: Mapping[str, str] | None = None,
    digits: int = 1,
    best: str | None = "max",
    best_within: str = "column",
) -> str:
    """A Markdown table of ``cells[column][row]``: value lists as mean ± std, strings as given.

    Args:
        best: ``"max"`` or ``"min"``: set the best mean in bold; ``None``: no bold.
        best_within: ``"column"`` (best of each column) or ``"row"`` (best of each row).
    """
    if best not in ("max", "min", None) or best_within not in ("column", "row"):
        raise ValueError(f"best must be 'max', 'min' or None and best_within 'column' or "
                         f"'row', got {best!r} and {best_within!r}")
    titles = column_titles or {}

    def values(row: str, column: str) -> Sequence[float] | str:
        return cells.get(column, {}).get(row, [])

    def winner(keys: Sequence[tuple[str, str]]) -> tuple[str, str] | None:
        if best is None:
            return None
        means = {
            k: statistics.fmean(v) for k in keys if (v := values(*k)) and not isinstance(v, str)
        }
        if not means:
            return None
        return (max if best == "max" else min)(means, key=means.__getitem__)

    groups = (
        [[(r, c) for r in rows] for c in columns]
        if best_within == "column"
        else [[(r, c) for c in columns] for r in rows]
    )
    bold = {winner(group) for group in groups}
    lines = [
        "| " + " | ".join([row_header, *(titles.get(c, c) for c in columns)]) + " |",
        "|" + "---|" * (len(columns) + 1),
    ]
    for row in rows:
        entries = []
        for column in columns:
            value = values(row, column)
            text = value if isinstance(value, str) else mean_std(value, digits)
            entries.append(f"**{text}**" if (row, column) in bold else text)
        lines.append("| " + " | ".join([row, *entries]) + " |")
    return "\n".join(lines) + "\n"
