"""BIN paper, main classification table (CIFAR columns): BN against BIN in ResNet-110."""

from normlab.experiments.registry import Cell, Experiment, register
from normlab.experiments.tables._common import CIFAR100, paper_by_row

PAPER = {"BN": ("93.72 ± 0.18", "74.26 ± 0.33"), "BIN": ("94.29 ± 0.09", "75.88 ± 0.30")}
DATA = {"CIFAR-10": (), "CIFAR-100": CIFAR100}

register(Experiment(
    name="bin_table1_cifar",
    source="BIN paper, classification table (CIFAR columns)",
    title="top-1 accuracy of the authors' ResNet-110 (bottleneck units) with BN or BIN",
    rows=tuple(PAPER),
    columns=tuple(DATA),
    cells={
        (norm, data): Cell("bin_cifar_resnet164", (f"model.norm={norm.lower()}",),
                           full_overrides=full, tiny=data == "CIFAR-10")
        for norm in PAPER
        for data, full in DATA.items()
    },
    metric="accuracy",
    best_within="column",
    paper=paper_by_row(PAPER, tuple(DATA)),
    notes=(
        "The authors' 'ResNet-110' is built with bottleneck units by their code, i.e. "
        "ResNet-164 (normlab's bin_cifar_resnet164). Gates at 10x lr without weight decay, "
        "clipped to [0, 1] after every step."
    ),
))
