"""BIN paper, CIFAR-100 table by architecture: BN against BIN in seven networks."""

from normlab.experiments.registry import Cell, Experiment, register
from normlab.experiments.tables._common import paper_by_row

NETWORKS = {  # row: (config, the paper's BN and BIN top-1 accuracy %)
    "AlexNet": ("bin_cifar100_alexnet", ("50.62", "51.00")),
    "VGG-19": ("bin_cifar100_vgg19", ("72.29", "72.50")),
    "ResNet-56": ("bin_cifar100_resnet56", ("72.92", "75.05")),
    "PreResNet-110": ("bin_cifar100_preresnet110", ("76.49", "77.84")),
    "WRN-28-10": ("bin_cifar100_wrn28_10", ("80.92", "81.48")),
    "ResNeXt-29 8×64d": ("bin_cifar100_resnext29_8x64d", ("80.50", "81.57")),
    "DenseNet-BC-100-12": ("bin_cifar100_densenet100_12", ("76.93", "77.80")),
}
COLUMNS = ("BN", "BIN")
TINY_ROW = "ResNet-56"

register(Experiment(
    name="bin_cifar100_architectures",
    source="BIN paper, CIFAR-100 results by architecture",
    title="CIFAR-100 top-1 accuracy of seven networks with BN or BIN",
    rows=tuple(NETWORKS),
    columns=COLUMNS,
    cells={
        (net, column): Cell(config, (f"model.norm={column.lower()}",), tiny=net == TINY_ROW)
        for net, (config, _) in NETWORKS.items()
        for column in COLUMNS
    },
    metric="accuracy",
    paper=paper_by_row({net: numbers for net, (_, numbers) in NETWORKS.items()}, COLUMNS),
    notes=(
        "The paper gives no per-network recipe. The configs use the published commands of "
        "bearpaw/pytorch-classification, the code base of the authors' CIFAR experiments "
        "(see each config's description); WRN-28-10 runs without that code base's dropout "
        "0.3, and the authors' ResNet-56 and PreResNet-110 may have had bottleneck units "
        "where normlab's have basic blocks. The tiny scale runs the ResNet-56 row only, as "
        "a half-width ResNet-20 on the built-in digits."
    ),
))
