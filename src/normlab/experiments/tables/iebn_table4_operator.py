"""IEBN paper, Table 4 (left): how IEBN processes the squeezed feature (Linear, Identity, FC)."""

from normlab.experiments.registry import Cell, Experiment, register
from normlab.experiments.tables._common import CIFAR100, TWO_GPU_STATISTICS

ROWS = {  # row: IEBN operator, paper's test accuracy (%)
    "Linear (IEBN)": ("linear", "77.09 ± 0.15"),
    "Identity": ("identity", "67.53 ± 2.49"),
    "FC": ("fc", "76.11 ± 0.28"),
}

register(Experiment(
    name="iebn_table4_operator",
    source="IEBN paper, Table 4 left (Table 4 in the second version)",
    title="ResNet164 with IEBN on CIFAR-100: linear, identity or fully connected gate operator",
    rows=tuple(ROWS),
    columns=("Test Acc.",),
    cells={
        (row, "Test Acc."): Cell(
            "iebn_cifar_resnet164", (f"model.kwargs.norm_kwargs.operator={operator}",),
            full_overrides=CIFAR100 + TWO_GPU_STATISTICS,
        )
        for row, (operator, _) in ROWS.items()
    },
    metric="accuracy",
    best_within="column",
    epoch="best",
    paper={(row, "Test Acc."): number for row, (_, number) in ROWS.items()},
    notes=(
        "The ablations ran on 2 GPUs: the full scale takes BN statistics over 64 of every "
        "128 samples (model.virtual_batch_size=64). FC uses reduction 16 (not stated)."
    ),
))
