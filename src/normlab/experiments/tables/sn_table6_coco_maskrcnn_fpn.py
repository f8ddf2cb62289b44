"""SN paper, Table VI (and Figs. 10b-11): Mask R-CNN + FPN (ResNet-50) on COCO, BN†, GN or
SN in the backbone and none, GN or SN in the FPN, box head and mask head."""

from normlab.experiments.tables._detection import BOX_AND_MASK, register_detection_table

PAPER = {  # COCO val2017 box AP, AP.5, AP.75, then mask AP, AP.5, AP.75 (%)
    "BN† / –": ("38.6", "59.5", "41.9", "34.2", "56.2", "36.1"),
    "BN† / GN": ("39.5", "60.0", "43.2", "34.4", "56.4", "36.3"),
    "BN† / SN": ("40.0", "61.0", "43.3", "34.8", "57.3", "36.3"),
    "GN / GN": ("40.2", "60.9", "43.8", "35.7", "57.8", "38.0"),
    "GN / SN": ("40.4", "61.4", "44.2", "36.0", "58.4", "38.1"),
    "SN / SN": ("41.0", "62.3", "45.1", "36.5", "58.9", "38.7"),
}

register_detection_table(
    name="sn_table6_coco_maskrcnn_fpn",
    source="SN paper, Table VI (and Figs. 10b-11)",
    title="box and mask AP of Mask R-CNN + FPN (ResNet-50) on COCO with BN†, GN or SN per "
          "backbone / head (Detectron 2x)",
    config="sn_coco_maskrcnn_fpn",
    paper=PAPER,
    metrics=BOX_AND_MASK,
    head_norm=True,
    notes=(
        "The head's norm is that of the FPN, the 4conv1fc box head and the 4-conv mask "
        "head; the head \"–\" is Detectron's 2fc box head and a mask head without norm. "
        "Statistics are per GPU (8 GPUs x 2 images: run under torchrun with 8 processes, "
        "or one process normalizes over all 16). Rows with SN layers get the figure of "
        "their ratios per component over the epochs (the paper's Figs. 10b and 11: BN's "
        "share rising in the backbone and box head, LN's large in the mask head)."
    ),
)
