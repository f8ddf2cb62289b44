"""SN paper, Table V: Faster R-CNN + FPN (ResNet-50) on COCO, BN†, GN or SN in the backbone
and none, GN or SN in the FPN and box head."""

from normlab.experiments.tables._detection import BOX, register_detection_table

PAPER = {  # COCO val2017 box AP (%): AP, AP.5, AP.75, APl, APm, APs
    "BN† / –": ("36.7", "58.4", "39.6", "48.1", "39.8", "21.1"),
    "BN† / GN": ("37.2", "58.0", "40.4", "48.6", "40.3", "21.6"),
    "BN† / SN": ("38.0", "59.4", "41.5", "48.9", "41.3", "22.7"),
    "GN / GN": ("38.2", "58.7", "41.3", "49.6", "41.0", "22.4"),
    "SN / SN": ("39.3", "60.9", "42.8", "50.3", "42.7", "23.5"),
}

register_detection_table(
    name="sn_table5_coco_fasterrcnn_fpn",
    source="SN paper, Table V",
    title="box AP of Faster R-CNN + FPN (ResNet-50) on COCO with BN†, GN or SN per "
          "backbone / head (Detectron 1x)",
    config="sn_coco_fasterrcnn_fpn",
    paper=PAPER,
    metrics=BOX,
    head_norm=True,
    notes=(
        "The head's norm is that of the FPN and of the 4conv1fc box head; the head \"–\" is "
        "Detectron's 2fc box head without norm. Statistics are per GPU (8 GPUs x 2 images: "
        "run under torchrun with 8 processes, or one process normalizes over all 16)."
    ),
)
