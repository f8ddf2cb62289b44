"""IEBN paper, Table 5: the initial values of the gate's scale and shift (a 3 x 3 grid)."""

from normlab.experiments.registry import Cell, Experiment, register
from normlab.experiments.tables._common import CIFAR100, TWO_GPU_STATISTICS, paper_by_row

VALUES = (1, 0, -1)
PAPER = {  # rows: initial gamma_hat; columns: initial beta_hat; test accuracy (%)
    1: ("68.5", "66.96", "69.53"),
    0: ("75.86", "76.21", "77.09"),
    -1: ("74.64", "74.73", "75.31"),
}

register(Experiment(
    name="iebn_table5_init_grid",
    source="IEBN paper, Table 5 (Table 6 in the second version)",
    title="ResNet164 with IEBN on CIFAR-100: rows initial γ̂, columns initial β̂",
    rows=tuple(f"γ̂ = {g}" for g in VALUES),
    columns=tuple(f"β̂ = {b}" for b in VALUES),
    cells={
        (f"γ̂ = {g}", f"β̂ = {b}"): Cell(
            "iebn_cifar_resnet164", (f"model.kwargs.norm_kwargs.gate_init=[{g},{b}]",),
            full_overrides=CIFAR100 + TWO_GPU_STATISTICS,
        )
        for g in VALUES
        for b in VALUES
    },
    metric="accuracy",
    best_within="column",
    epoch="best",
    paper=paper_by_row({f"γ̂ = {g}": PAPER[g] for g in VALUES}, tuple(f"β̂ = {b}" for b in VALUES)),
    notes="(0, -1) is IEBN's default. The full scale takes BN statistics over 64 of 128.",
))
