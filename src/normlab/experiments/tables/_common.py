"""Overrides and helpers shared by several paper tables."""

from collections.abc import Mapping, Sequence

from normlab.experiments.registry import Cell, Experiment

CIFAR100 = ("data.name=cifar100", "data.root=data/cifar-100-python")
"""Full-scale items that turn a shipped CIFAR-10 recipe into its CIFAR-100 run."""

SE = ("model.norm=bn", "model.kwargs.se_reduction=16")
"""The IEBN paper's SE baseline: a BN network with an SE module in every residual unit
(reduction 16; the paper does not state it, and 16 reproduces its parameter counts)."""

TWO_GPU_STATISTICS = ("model.virtual_batch_size=64",)
"""The IEBN ablations ran on 2 GPUs with DataParallel: BN statistics over 64 of the 128."""


def paper_by_row(
    numbers: Mapping[str, Sequence[str | None]], columns: Sequence[str]
) -> dict[tuple[str, str], str]:
    """``paper`` of an :class:`Experiment` from one tuple per row, in column order
    (``None`` where the paper has a blank)."""
    return {
        (row, column): text
        for row, texts in numbers.items()
        for column, text in zip(columns, texts, strict=True)
        if text is not None
    }


def iebn_ablation(
    *, name: str, source: str, title: str, option: str,
    rows: Mapping[str, tuple[str, str | None]], notes: str, curves: bool = False,
) -> Experiment:
    """A one-column IEBN ablation on ResNet164 / CIFAR-100 (2-GPU statistics at full scale):
    ``rows[label] = (value of IEBN2d's option, the paper's test accuracy or None)``."""
    column = "Test Acc."
    return Experiment(
        name=name,
        source=source,
        title=title,
        rows=tuple(rows),
        columns=(column,),
        cells={
            (row, column): Cell(
                "iebn_cifar_resnet164", (f"model.kwargs.norm_kwargs.{option}={value}",),
                full_overrides=CIFAR100 + TWO_GPU_STATISTICS,
            )
            for row, (value, _) in rows.items()
        },
        metric="accuracy",
        epoch="best",
        best_within="column",
        curves=curves,
        paper={(row, column): number for row, (_, number) in rows.items() if number},
        notes=notes,
    )
