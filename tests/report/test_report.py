"""Report tables: mean ± std formatting and best-in-column marking."""

import pytest

from normlab.report import markdown_table, mean_std


def test_mean_std_formats():
    assert mean_std([]) == "–"
    assert mean_std([91.25]) == "91.2"
    assert mean_std([90.0, 92.0]) == "91.0 ± 1.0"
    assert mean_std([1.0, 2.0], digits=2) == "1.50 ± 0.50"


def test_markdown_table_layout_and_bold_best():
    cells = {"a": {"x": [1.0, 3.0], "y": [5.0]}, "b": {"x": [7.0]}}
    text = markdown_table(cells, ["x", "y"], ["a", "b"], row_header="norm",
                          column_titles={"a": "A"})
    lines = text.strip().splitlines()
    assert lines[0] == "| norm | A | b |"
    assert lines[2] == "| x | 2.0 ± 1.0 | **7.0** |"
    assert lines[3] == "| y | **5.0** | – |"


def test_markdown_table_best_min_within_rows_and_verbatim_strings():
    cells = {"a": {"x": [4.5], "y": "diverged"}, "b": {"x": [3.0, 5.0], "y": [9.0]}}
    text = markdown_table(cells, ["x", "y"], ["a", "b"], best="min", best_within="row")
    lines = text.strip().splitlines()
    assert lines[2] == "| x | 4.5 | **4.0 ± 1.0** |"
    assert lines[3] == "| y | diverged | **9.0** |"
    plain = markdown_table(cells, ["x"], ["a", "b"], best=None)
    assert "**" not in plain
    with pytest.raises(ValueError, match="best must be 'max', 'min' or None"):
        markdown_table(cells, ["x"], ["a"], best="most")
    with pytest.raises(ValueError, match="best_within 'column' or 'row'"):
        markdown_table(cells, ["x"], ["a"], best_within="diagonal")
