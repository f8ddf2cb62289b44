"""Named experiments: a paper table as a grid of training runs, laid out as the paper lays it out.

An :class:`Experiment` names its rows and columns in the paper's order and says, for each
(row, column) :class:`Cell`, which shipped config trains it and with which overrides. Every
cell runs at two scales:

- ``full``: the paper's recipe (``Cell.config``), on the paper's data (local files);
- ``tiny``: the config's CPU-sized variant (``<config>_tiny``, minutes), with the same norms
  and schedule shape, on built-in data -- or, for the ImageNet recipes, streaming a small
  ImageNet-format folder (``--data imagefolder=PATH``; ``normlab data sample OUT`` writes
  one). Cells that would repeat another cell there (a
  CIFAR-100 column: the tiny data is the digits; another network: the tiny network is the
  same small ResNet) have ``tiny=False`` and are left out at that scale.

Most tables have one run per (row, column) and show one number of it (top-1 error or
accuracy). A table whose columns are several numbers of *one* run per row (the SN paper's
detection tables: AP, AP.5, AP.75, ... of each backbone / head pair) names those numbers
with :attr:`Experiment.metrics` (column -> ``summary.json`` key) and keeps each row's run
under ``(row, RUN)``.

Experiments register themselves by name (:func:`register`) from one module per table.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "RUN",
    "SCALES",
    "Cell",
    "Experiment",
    "get_experiment",
    "label_slug",
    "list_experiments",
    "register",
    "tiny_variant",
]

SCALES = ("tiny", "full")

RUN = "run"
"""The column key of each row's one run in a table whose columns are metrics
(:attr:`Experiment.metrics`): ``cells[(row, RUN)]``."""


_TRANSLITERATION = {"γ": "gamma", "β": "beta", "ρ": "rho", "δ": "delta", "×": "x", "+": " plus ",
                    "\u0302": "hat", "†": " frozen ", "‡": " scratch "}


def label_slug(label: str) -> str:
    """A folder name for a row or column label: lower case ASCII letters, digits, dots and
    dashes; Greek letters spelled out, a minus sign before a number kept as ``m``
    (``"γ̂ = -1"`` -> ``"gammahat-m1"``), the SN paper's frozen (†) and from-scratch (‡)
    marks as words (``"BN‡ / BN"`` -> ``"bn-scratch-bn"``)."""
    text = "".join(_TRANSLITERATION.get(ch, ch) for ch in label.lower())
    text = re.sub(r"(?<![a-z0-9.])-(?=[0-9])", "m", text)
    return re.sub(r"[^a-z0-9.]+", "-", text).strip("-")


def tiny_variant(config: str) -> str:
    """The CPU-sized variant of a config: ``name_tiny`` for a shipped name,
    ``dir/name_tiny.yaml`` for a file path."""
    if config.endswith((".yaml", ".yml")):
        path = Path(config)
        return str(path.with_name(f"{path.stem}_tiny{path.suffix}"))
    return f"{config}_tiny"


@dataclass(frozen=True)
class Cell:
    """One (row, column) entry of a paper table: the runs that produce it.

    Attributes:
        config: Shipped config name of the paper's recipe (``normlab list configs``).
        overrides: ``section.key=value`` items for both scales (e.g. ``model.norm=bn``).
        full_overrides: Items for the full scale only (e.g. ``data.name=cifar100``).
        tiny_overrides: Items for the tiny scale only (e.g. a batch that fits its data).
        tiny: Whether the cell also runs at the tiny scale.
    """

    config: str
    overrides: tuple[str, ...] = ()
    full_overrides: tuple[str, ...] = ()
    tiny_overrides: tuple[str, ...] = ()
    tiny: bool = True

    def at(self, scale: str) -> tuple[str, tuple[str, ...]] | None:
        """``(config name, overrides)`` at ``scale``, or ``None`` if the cell does not run."""
        if scale == "full":
            return self.config, self.overrides + self.full_overrides
        if scale == "tiny":
            if not self.tiny:
                return None
            return tiny_variant(self.config), self.overrides + self.tiny_overrides
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")


@dataclass(frozen=True)
class Experiment:
    """A paper table (or the numbers behind a figure) as a grid of runs.

    Attributes:
        name: Registry name, ``<paper>_<table>_<topic>``.
        source: Where it is in the paper, e.g. ``"IEBN paper, Table 6"``.
        title: What the table shows (one line).
        rows: Row labels in the paper's order.
        columns: Column labels in the paper's order.
        cells: ``cells[(row, column)]``; a missing key is a blank in the paper's table.
        metric: ``"error"`` (top-1 error, %) or ``"accuracy"`` (top-1 accuracy, %), as the
            paper reports it. With :attr:`metrics`: whether smaller (``"error"``) or larger
            (``"accuracy"``) numbers are better.
        epoch: ``"last"`` (the last epoch's test result) or ``"best"`` (the best over
            epochs, when that is how the paper's authors reported it). Not used with
            :attr:`metrics` (their keys say which epoch).
        best_within: The report sets the best entry of each ``"row"`` (columns are the
            contenders, e.g. norms) or of each ``"column"`` in bold.
        curves: The paper shows test accuracy against the epoch (a figure): the report
            draws every cell's curve, mean ± std over seeds.
        paper: The paper's numbers, ``paper[(row, column)]`` as printed (strings).
        notes: What differs from the paper, or how to read the table (Markdown).
        metrics: Column label -> ``summary.json`` key (e.g. ``"AP.5"`` -> ``"final_box_ap50"``):
            the columns are these numbers of one run per row, ``cells[(row, RUN)]``, shown
            as recorded; empty (default): one run per (row, column), showing ``metric``.
        unit: What the numbers are, for the report's headings; ``None``: top-1 ``metric``
            (%).
    """

    name: str
    source: str
    title: str
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    cells: Mapping[tuple[str, str], Cell]
    metric: str = "error"
    epoch: str = "last"
    best_within: str = "row"
    curves: bool = False
    paper: Mapping[tuple[str, str], str] = field(default_factory=dict)
    notes: str = ""
    metrics: Mapping[str, str] = field(default_factory=dict)
    unit: str | None = None

    def __post_init__(self) -> None:
        if self.metric not in ("error", "accuracy"):
            raise ValueError(f"metric must be 'error' or 'accuracy', got {self.metric!r}")
        if self.epoch not in ("last", "best"):
            raise ValueError(f"epoch must be 'last' or 'best', got {self.epoch!r}")
        if self.best_within not in ("row", "column"):
            raise ValueError(f"best_within must be 'row' or 'column', got {self.best_within!r}")
        for kind, labels in (("row", self.rows), ("column", self.columns)):
            slugs = [label_slug(label) for label in labels]
            clash = [a for a in labels if not label_slug(a) or slugs.count(label_slug(a)) > 1]
            if clash:
                raise ValueError(f"{self.name}: {kind} labels {clash} give the same or an empty "
                                 "folder name; make them differ in letters or digits")
        if self.metrics and tuple(self.metrics) != self.columns:
            raise ValueError(f"{self.name}: the columns {self.columns} must be the metrics' "
                             f"labels {tuple(self.metrics)}, in that order")
        for keys, columns in ((self.cells, self.run_columns), (self.paper, self.columns)):
            for key in keys:
                if key[0] not in self.rows or key[1] not in columns:
                    raise ValueError(f"{self.name}: cell {key} is not in the rows and "
                                     f"columns {columns}")

    @property
    def run_columns(self) -> tuple[str, ...]:
        """The column keys of :attr:`cells`: :attr:`columns`, or ``(RUN,)`` when the
        columns are :attr:`metrics` of one run per row."""
        return (RUN,) if self.metrics else self.columns

    def cell_label(self, cell: tuple[str, str]) -> str:
        """``"row / column"`` of a cell, or the row alone when the columns are
        :attr:`metrics` of its one run."""
        return cell[0] if self.metrics else f"{cell[0]} / {cell[1]}"

    def runs(self, scale: str) -> list[tuple[tuple[str, str], str, tuple[str, ...]]]:
        """``((row, column), config, overrides)`` of every cell that runs at ``scale``,
        in reading order (row by row)."""
        out = []
        for row in self.rows:
            for column in self.run_columns:
                cell = self.cells.get((row, column))
                spec = cell.at(scale) if cell is not None else None
                if spec is not None:
                    out.append(((row, column), *spec))
        return out


_REGISTRY: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    """Add ``experiment`` to the registry (its name must be new); return it."""
    if experiment.name in _REGISTRY:
        raise ValueError(f"experiment {experiment.name!r} is already registered")
    _REGISTRY[experiment.name] = experiment
    return experiment


def list_experiments() -> list[str]:
    """Names of every registered experiment, sorted."""
    return sorted(_REGISTRY)


def get_experiment(name: str) -> Experiment:
    """The experiment called ``name``.

    Raises:
        KeyError: No experiment has that name (the message lists them).
    """
    if name not in _REGISTRY:
        raise KeyError(f"unknown experiment {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]

