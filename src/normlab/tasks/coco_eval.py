"""COCO average precision of a detector's predictions, with the official pycocotools code.

:class:`CocoEvaluator` records each evaluated image's detections (boxes as COCO ``xywh``,
scores, COCO category ids and, for instance segmentation, run-length-encoded masks
thresholded at 0.5, as torchvision's detection references do) and scores all of them at
once with pycocotools' ``COCOeval`` (Lin et al., "Microsoft COCO: Common Objects in
Context", 2014; the protocol of the SN paper's Tables IV-VI): AP averaged over IoU
thresholds 0.50:0.05:0.95 with 101-point interpolated precision, AP at IoU 0.50 and 0.75,
and AP of small (< 32² px), medium and large objects, at most 100 detections per image.

Only the images that were evaluated count (``COCOeval``'s ``imgIds``), so a limited pass
(``train.limit_batches``) scores that subset honestly instead of counting the rest of the
ground truth as missed. No detection at all scores 0 where there is ground truth;
a size class without ground-truth objects in the evaluated images has no AP (``COCOeval``'s
-1), reported as NaN. pycocotools' progress prints are silenced.

pycocotools is an optional dependency (``pip install normlab[vision]``), imported when
a score is computed.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from normlab.data.coco_masks import encode_rle, pycocotools_modules
from normlab.train.task import GatherMetric

__all__ = ["AP_SUFFIXES", "CocoEvaluator", "ap_keys", "encode_masks", "load_ground_truth"]

AP_SUFFIXES = ("ap", "ap50", "ap75", "aps", "apm", "apl")
"""Row-key suffixes of ``COCOeval.stats[0:6]``, in that order: AP, AP50, AP75, APs, APm, APl."""
MASK_THRESHOLD = 0.5
"""A predicted mask covers the pixels whose probability is above this."""


def ap_keys(masks: bool) -> tuple[str, ...]:
    """The row keys of :class:`CocoEvaluator`: ``box_ap`` ... ``box_apl`` and, with
    ``masks``, ``mask_ap`` ... ``mask_apl`` (percent)."""
    kinds = ("box", "mask") if masks else ("box",)
    return tuple(f"{kind}_{suffix}" for kind in kinds for suffix in AP_SUFFIXES)


@functools.lru_cache(maxsize=4)
def _cached_ground_truth(path: str, modified_ns: int) -> Any:
    del modified_ns  # part of the cache key: a rewritten file is read again
    coco, _ = pycocotools_modules()
    with contextlib.redirect_stdout(io.StringIO()):
        return coco(path)


def load_ground_truth(annotation_file: str | Path) -> Any:
    """The ``pycocotools.coco.COCO`` index of an instances json, read once per file version
    (later calls return the same object until the file changes)."""
    path = Path(annotation_file).resolve()
    return _cached_ground_truth(str(path), path.stat().st_mtime_ns)


def encode_masks(masks: torch.Tensor) -> list[dict[str, Any]]:
    """COCO compressed run-length encodings of predicted masks, thresholded at 0.5.

    Shape:
        - masks: (R, 1, H, W) or (R, H, W) probabilities (or 0/1 values).
        - output: R dicts ``{"size": [H, W], "counts": str}``.
    """
    binary = (masks.reshape(-1, *masks.shape[-2:]) > MASK_THRESHOLD).to(torch.uint8)
    return encode_rle(binary.cpu().numpy())


def _annotations(record: dict[str, Any], iou_type: str) -> list[dict[str, Any]]:
    """One image's detections as COCO results: ``bbox`` (``xywh``) or ``segmentation``."""
    shapes = record["boxes"].tolist() if iou_type == "bbox" else record["masks"]
    key = "bbox" if iou_type == "bbox" else "segmentation"
    return [
        {"image_id": record["image_id"], "category_id": int(c), "score": float(s), key: shape}
        for shape, s, c in zip(shapes, record["scores"], record["category_ids"], strict=True)
    ]


def _detections(gt: Any, annotations: list[dict[str, Any]], iou_type: str) -> Any:
    """The results index ``COCO.loadRes`` builds (ids, ``iscrowd`` 0, box or mask area,
    a mask's bounding box), also for no results (where ``loadRes`` fails)."""
    coco, mask = pycocotools_modules()
    for number, ann in enumerate(annotations, 1):
        ann["id"], ann["iscrowd"] = number, 0
        if iou_type == "bbox":
            ann["area"] = ann["bbox"][2] * ann["bbox"][3]
        else:
            ann["area"] = float(mask.area(ann["segmentation"]))
            ann["bbox"] = mask.toBbox(ann["segmentation"]).tolist()
    results = coco()
    results.dataset = {
        "images": list(gt.dataset["images"]),
        "categories": copy.deepcopy(gt.dataset["categories"]),
        "annotations": annotations,
    }
    with contextlib.redirect_stdout(io.StringIO()):
        results.createIndex()
    return results


def _average_precision(
    gt: Any, annotations: list[dict[str, Any]], iou_type: str, image_ids: list[int]
) -> list[float]:
    """``COCOeval.stats[0:6]`` in percent (NaN where ``COCOeval`` has no ground truth)."""
    from pycocotools.cocoeval import COCOeval  # optional dependency: pycocotools

    evaluation = COCOeval(gt, _detections(gt, annotations, iou_type), iou_type)
    evaluation.params.imgIds = image_ids
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return [100.0 * float(s) if s >= 0 else math.nan for s in evaluation.stats[: len(AP_SUFFIXES)]]


class CocoEvaluator(GatherMetric):
    """Box (and mask) AP of a detector on a COCO split, scored by pycocotools ``COCOeval``.

    :meth:`update` reads batches ``(images, targets)`` (each target's ``image_id``) and the
    detector's eval-mode output: per image a dict with ``boxes`` (R, 4) ``xyxy`` in the
    image's original pixels, ``labels`` (R,) in 1..K, ``scores`` (R,) and, for instance
    segmentation, ``masks`` (R, 1, H, W) probabilities (torchvision's ``GeneralizedRCNN``).
    Each image is recorded once (a repeated image id keeps its first record).

    Args:
        annotation_file: The split's ``instances_*.json`` (the ground truth).
        category_ids: COCO category id of each label: label ``k`` is
            ``category_ids[k - 1]`` (0 is background).
        masks: Also score the predicted masks (``mask_*`` keys).
    """

    def __init__(
        self, annotation_file: str | Path, category_ids: Sequence[int], *, masks: bool = False
    ) -> None:
        super().__init__()
        self.annotation_file = Path(annotation_file)
        self.category_ids = torch.tensor([0, *category_ids], dtype=torch.int64)
        self.masks = masks

    def update(self, batch: Any, output: Any) -> None:
        _, targets = batch
        for target, prediction in zip(targets, output, strict=True):
            boxes = prediction["boxes"].detach().float().cpu()
            record: dict[str, Any] = {
                "image_id": int(target["image_id"]),
                "boxes": torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1),
                "scores": prediction["scores"].detach().float().cpu(),
                "category_ids": self.category_ids[prediction["labels"].detach().cpu()],
            }
            if self.masks:
                record["masks"] = encode_masks(prediction["masks"].detach())
            self.records.append(record)

    def score(self, records: list[Any]) -> dict[str, float]:
        """Box (and mask) AP, AP50, AP75, APs, APm, APl of ``records`` in percent.

        Raises:
            ValueError: No image was evaluated, or a record's image id is not in the
                annotation file.
        """
        unique = {r["image_id"]: r for r in reversed(records)}
        if not unique:
            raise ValueError("the evaluation loader yielded no images")
        gt = load_ground_truth(self.annotation_file)
        unknown = sorted(set(unique) - set(gt.getImgIds()))
        if unknown:
            raise ValueError(
                f"{self.annotation_file} has no image id {unknown[0]} (evaluated "
                f"{len(unknown)} unknown image(s)); evaluate with that split's annotation file"
            )
        image_ids = sorted(unique)
        kinds = [("box", "bbox")] + ([("mask", "segm")] if self.masks else [])
        row: dict[str, float] = {}
        for kind, iou_type in kinds:
            annotations = [a for i in image_ids for a in _annotations(unique[i], iou_type)]
            stats = _average_precision(gt, annotations, iou_type, image_ids)
            row.update({f"{kind}_{s}": value for s, value in zip(AP_SUFFIXES, stats)})
        return row
