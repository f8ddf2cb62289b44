"""The SN paper's COCO tables (IV-VI): rows ``"backbone / head"`` in the paper's notation,
columns the COCO metrics of each row's one run.

A row label says which norm each component uses (SN paper Sec. 4.2): ``BN†`` is BN frozen
in fine-tuning (``model.kwargs.frozen_norm``), ``BN``, ``GN``, ``SN`` are fine-tuned with
per-GPU statistics, a ``‡`` marks a backbone trained from scratch ("with a longer
schedule"), and the head ``–`` has no norm (Detectron's 2fc box head). Fine-tuned backbones
start from the ImageNet ResNet-50 of their norm (:data:`PRETRAINED`, full scale only).
"""

from collections.abc import Mapping, Sequence

from normlab.experiments.registry import RUN, Cell, Experiment, register
from normlab.experiments.tables._common import paper_by_row

BOX = {
    "AP": "final_box_ap", "AP.5": "final_box_ap50", "AP.75": "final_box_ap75",
    "APl": "final_box_apl", "APm": "final_box_apm", "APs": "final_box_aps",
}
"""Tables IV and V: box AP at IoU 0.5:0.95, 0.5, 0.75, and for large, medium, small objects."""

BOX_AND_MASK = {
    "box AP": "final_box_ap", "box AP.5": "final_box_ap50", "box AP.75": "final_box_ap75",
    "mask AP": "final_mask_ap", "mask AP.5": "final_mask_ap50", "mask AP.75": "final_mask_ap75",
}
"""Table VI: box and mask AP (the paper's APb and APm) at IoU 0.5:0.95, 0.5 and 0.75."""

PRETRAINED = "pretrained/imagenet_resnet50_{norm}.pth"
"""Where the full scale finds each norm's ImageNet ResNet-50 (a state dict or a normlab
checkpoint; ``bn``: e.g. torchvision's weights, ``gn``, ``sn``: the SN paper fine-tunes from
SN(8,32), a run of ``sn_imagenet_resnet50_step``). Override with
``--set model.kwargs.pretrained=PATH`` (or a run folder)."""

FROZEN, SCRATCH, NO_NORM = "†", "‡", "–"


def _norm(label: str) -> str:
    return label.rstrip(FROZEN + SCRATCH).lower()


def detection_cell(
    config: str, row: str, *, head_norm: bool, scratch: Sequence[str] = ()
) -> Cell:
    """The run of one ``"backbone / head"`` row.

    Args:
        config: The shipped recipe.
        row: The row label, e.g. ``"BN† / SN"``, ``"SN‡ / SN"``.
        head_norm: Whether the head has its own norm (FPN: ``model.kwargs.head_norm``);
            false for C4, whose RoI head is the backbone's conv5 (normalized like it).
        scratch: Full-scale items of a ``‡`` row (its longer schedule).
    """
    backbone, head = (part.strip() for part in row.split("/"))
    items = [f"model.norm={_norm(backbone)}",
             f"model.kwargs.frozen_norm={str(backbone.endswith(FROZEN)).lower()}"]
    if head_norm:
        items.append(f"model.kwargs.head_norm={'null' if head == NO_NORM else _norm(head)}")
    if backbone.endswith(SCRATCH):  # the tiny scale trains every row from scratch
        return Cell(config, tuple(items),
                    full_overrides=("model.kwargs.pretrained=null", *scratch), tiny=False)
    pretrained = PRETRAINED.format(norm=_norm(backbone))
    return Cell(config, tuple(items), full_overrides=(f"model.kwargs.pretrained={pretrained}",))


TINY_NOTE = (
    "The tiny scale trains the same detector with a ResNet-18 backbone and smaller heads "
    "from scratch on the built-in COCO-format set (no ImageNet weights: nothing is "
    "downloaded), so BN† there is BN frozen at its initialization, i.e. a backbone without "
    "normalization: BN† / – (no norm anywhere) diverges or learns nothing there, and the "
    "BN† rows only show what the head's norm does on its own. The ‡ rows, which would "
    "repeat their fine-tuned rows, are left out."
)


def register_detection_table(
    *,
    name: str,
    source: str,
    title: str,
    config: str,
    paper: Mapping[str, Sequence[str]],
    metrics: Mapping[str, str],
    head_norm: bool,
    notes: str,
    scratch: Sequence[str] = (),
    curves: bool = False,
) -> Experiment:
    """Register a COCO table: one row per ``paper`` entry (``"backbone / head"`` -> the
    paper's numbers in the order of ``metrics``), one run per row (:func:`detection_cell`)."""
    columns = tuple(metrics)
    unit = "COCO box and mask AP (%)" if "final_mask_ap" in metrics.values() else "COCO box AP (%)"
    return register(Experiment(
        name=name,
        source=source,
        title=title,
        rows=tuple(paper),
        columns=columns,
        cells={(row, RUN): detection_cell(config, row, head_norm=head_norm, scratch=scratch)
               for row in paper},
        metric="accuracy",
        best_within="column",
        curves=curves,
        paper=paper_by_row(paper, columns),
        notes=f"{notes} {TINY_NOTE}",
        metrics=metrics,
        unit=unit,
    ))
