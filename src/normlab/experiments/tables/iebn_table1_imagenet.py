"""IEBN paper, Table 1 (ImageNet rows): BN, SE and IEBN in four ImageNet networks."""

from normlab.experiments.registry import Cell, Experiment, register
from normlab.experiments.tables._common import SE, paper_by_row

NETWORKS = {
    "ResNet34": ("iebn_imagenet_resnet34", ("73.91", "74.39", "74.38")),
    "ResNet50": ("iebn_imagenet_resnet50", ("76.01", "76.61", "77.10")),
    "ResNet152": ("iebn_imagenet_resnet152", ("77.58", "78.36", "79.17")),
    "ResNeXt50 32x4d": ("iebn_imagenet_resnext50_32x4d", ("77.19", "78.04", "77.99")),
}
COLUMNS = {"BN": ("model.norm=bn",), "SE": SE, "IEBN": ("model.norm=iebn",)}

register(Experiment(
    name="iebn_table1_imagenet",
    source="IEBN paper, Table 1 (ImageNet rows)",
    title="top-1 accuracy of BN, SE and IEBN networks on ImageNet",
    rows=tuple(NETWORKS),
    columns=tuple(COLUMNS),
    cells={
        (net, column): Cell(config, overrides, tiny=net == "ResNet34")
        for net, (config, _) in NETWORKS.items()
        for column, overrides in COLUMNS.items()
    },
    metric="accuracy",
    epoch="best",
    paper=paper_by_row({net: numbers for net, (_, numbers) in NETWORKS.items()}, tuple(COLUMNS)),
    notes=(
        "Recipe of the paper's Table 7 (appendix): 120 epochs, batch 256, lr 0.1 with x0.1 "
        "at 30, 60 and 90. The full scale reads ImageNet from a local class-per-folder tree "
        "(see each config's data.root). The authors report the best validation accuracy. "
        "The tiny scale runs the ResNet34 row only, as a ResNet-18 at 32x32 streaming a "
        "sample folder (`--data imagefolder=PATH`; `normlab data sample OUT` writes one; "
        "every network's tiny variant is that same ResNet-18)."
    ),
))
