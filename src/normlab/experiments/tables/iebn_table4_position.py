"""IEBN paper, Table 4 (right): where the gate delta acts (gamma, beta or both)."""

from normlab.experiments.registry import Cell, Experiment, register
from normlab.experiments.tables._common import CIFAR100, TWO_GPU_STATISTICS

ROWS = {  # row: IEBN position, paper's test accuracy (%)
    "γ (IEBN)": ("gamma", "77.09 ± 0.15"),
    "β": ("beta", "75.03 ± 0.54"),
    "γ and β": ("both", "77.02 ± 0.08"),
}

register(Experiment(
    name="iebn_table4_position",
    source="IEBN paper, Table 4 right (Table 5 in the second version)",
    title="ResNet164 with IEBN on CIFAR-100: the gate scales gamma, beta or both",
    rows=tuple(ROWS),
    columns=("Test Acc.",),
    cells={
        (row, "Test Acc."): Cell(
            "iebn_cifar_resnet164", (f"model.kwargs.norm_kwargs.position={position}",),
            full_overrides=CIFAR100 + TWO_GPU_STATISTICS,
        )
        for row, (position, _) in ROWS.items()
    },
    metric="accuracy",
    best_within="column",
    epoch="best",
    paper={(row, "Test Acc."): number for row, (_, number) in ROWS.items()},
    notes="The full scale takes BN statistics over 64 of every 128 samples (2 GPUs).",
))
