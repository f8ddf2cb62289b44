"""IEBN paper, Table 3: the mix-datasets attack (MNIST or Fashion-MNIST in CIFAR-100 batches)."""

from normlab.experiments.registry import Cell, Experiment, register
from normlab.experiments.tables._common import paper_by_row

ROWS = {  # row: (config, overrides), paper's (BN, IEBN) CIFAR-100 test accuracy (%)
    "C": (("iebn_cifar100_mix_mnist", ("data.mix=null",)), ("74.29", "77.09")),
    "C+2×M": (("iebn_cifar100_mix_mnist", ("data.mix.k=2",)), ("73.13", "76.65")),
    "C+3×M": (("iebn_cifar100_mix_mnist", ("data.mix.k=3",)), ("71.54", "76.03")),
    "C+2×F": (("iebn_cifar100_mix_fashion", ("data.mix.k=2",)), ("71.56", "75.57")),
    "C+3×F": (("iebn_cifar100_mix_fashion", ("data.mix.k=3",)), ("71.27", "74.26")),
}
COLUMNS = {"BN": ("model.norm=bn",), "IEBN": ("model.norm=iebn",)}

register(Experiment(
    name="iebn_table3_mix_datasets",
    source="IEBN paper, Table 3",
    title="CIFAR-100 accuracy of ResNet164 when 120·k MNIST (M) or Fashion-MNIST (F) images "
          "join every batch of 100",
    rows=tuple(ROWS),
    columns=tuple(COLUMNS),
    cells={
        (row, column): Cell(config, overrides + norm)
        for row, ((config, overrides), _) in ROWS.items()
        for column, norm in COLUMNS.items()
    },
    metric="accuracy",
    epoch="best",
    paper=paper_by_row({row: numbers for row, (_, numbers) in ROWS.items()}, tuple(COLUMNS)),
    notes=(
        "The paper's 'acc drop' columns are each row minus row C. How the secondary images "
        "are brought to 32x32x3 and scored is documented in normlab.data.MixedLoader (the "
        "paper does not say). At the tiny scale the digits are the primary set and built-in "
        "synthetic images stand in for both MNIST and Fashion-MNIST, so the M and F rows "
        "differ only by seed there."
    ),
))
