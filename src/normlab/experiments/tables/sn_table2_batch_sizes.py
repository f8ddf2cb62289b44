"""SN paper, Table II: BN, GN and SN in ResNet-50 on ImageNet under (GPUs, samples per GPU).

A setting (G, S) trains with a batch of G·S and normalizes with statistics over S samples;
on one device that is ``model.virtual_batch_size=S`` (the learning rate follows the batch
linearly, ``optim.lr_reference_batch``).
"""

from normlab.experiments.registry import Cell, Experiment, register
from normlab.experiments.tables._common import paper_by_row

SETTINGS = ((8, 32), (8, 16), (8, 8), (8, 4), (8, 2), (1, 16), (1, 32), (8, 1), (1, 8))
PAPER = {  # top-1 accuracy (%); BN at (8, 1) does not converge ("–")
    "BN": ("76.4", "76.3", "75.2", "72.7", "65.3", "76.2", "76.5", None, "75.4"),
    "GN": ("75.9", "75.8", "76.0", "75.8", "75.9", "75.9", "75.8", "75.5", "75.5"),
    "SN": ("76.9", "76.7", "76.7", "75.9", "75.6", "76.3", "76.6", "75.0", "75.9"),
}
TINY_BATCH = 64
"""The largest batch of the tiny scale (the built-in digits have 1 347 training images)."""


def _column(setting: tuple[int, int]) -> str:
    return f"({setting[0]}, {setting[1]})"


def _cell(norm: str, setting: tuple[int, int]) -> Cell:
    gpus, per_gpu = setting
    norm_items = [f"model.norm={norm.lower()}"]
    if norm != "SN":  # the recipe's batch-average inference is SN's (Sec. 3.1)
        norm_items.append("eval.statistics=moving_average")
    if norm == "SN" and per_gpu == 1:  # one sample: BN would be IN, the paper drops it
        norm_items.append("model.kwargs.norm_kwargs.using_bn=false")
    batch_items = (f"data.batch_size={gpus * per_gpu}", f"model.virtual_batch_size={per_gpu}")
    tiny_batch = min(gpus * per_gpu, TINY_BATCH)
    return Cell(
        "sn_imagenet_resnet50_step",
        tuple(norm_items),
        full_overrides=batch_items,
        tiny_overrides=(f"data.batch_size={tiny_batch}", f"model.virtual_batch_size={per_gpu}",
                        f"optim.lr_reference_batch={TINY_BATCH}"),
    )


register(Experiment(
    name="sn_table2_batch_sizes",
    source="SN paper, Table II (and Fig. 1b)",
    title="top-1 accuracy of ResNet-50 on ImageNet with BN, GN or SN per (GPUs, samples per GPU)",
    rows=tuple(PAPER),
    columns=tuple(_column(s) for s in SETTINGS),
    cells={
        (norm, _column(setting)): _cell(norm, setting)
        for norm, numbers in PAPER.items()
        for setting, number in zip(SETTINGS, numbers)
        if number is not None
    },
    metric="accuracy",
    best_within="column",
    paper=paper_by_row(PAPER, tuple(_column(s) for s in SETTINGS)),
    notes=(
        "The paper's difference rows (GN-BN, SN-BN, SN-GN) follow from these three. At "
        "(8, 1) SN has no BN part (IN and LN only) and BN is not run (it did not converge in "
        f"the paper). The tiny scale keeps every statistics batch S but caps the batch at "
        f"{TINY_BATCH} images (so (8, 32) trains as (2, 32)), with the learning rate scaled "
        "linearly from 0.1 at 64. SN is evaluated with the paper's batch average (200 "
        "training batches, 10 at the tiny scale, before every evaluation; summary.json's "
        "eval_statistics), BN with its moving average (GN keeps no statistics)."
    ),
))
