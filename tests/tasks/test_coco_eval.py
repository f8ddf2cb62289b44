"""COCO AP from pycocotools: ground truth scores 100, a hand-computed case, no detections,
a subset of the images, and the records a detector's output turns into."""

from __future__ import annotations

import json
import math

import pytest
import torch

from normlab.data.coco_masks import decode_segmentation
from normlab.tasks.coco_eval import CocoEvaluator, ap_keys, encode_masks, load_ground_truth
from normlab.train.parallel import SINGLE

CATEGORY_IDS = (3, 9)  # label 1 is COCO category 3, label 2 category 9
IMAGES = {7: (60, 80), 12: (30, 30)}  # image id -> (height, width)
OBJECTS = [  # image id, category id, xywh (every box also its polygon mask)
    (7, 3, [10, 10, 40, 30]),  # medium: 1200 px
    (7, 9, [60, 40, 12, 8]),
    (7, 3, [2, 45, 6, 6]),
    (12, 9, [5, 5, 10, 10]),
    (12, 3, [18, 2, 8, 20]),
]


def _write_instances(path, objects=OBJECTS):
    def polygon(x, y, w, h):
        return [[x, y, x + w, y, x + w, y + h, x, y + h]]

    instances = {
        "images": [{"id": i, "height": h, "width": w, "file_name": f"{i}.jpg"}
                   for i, (h, w) in IMAGES.items()],
        "categories": [{"id": c, "name": f"c{c}"} for c in CATEGORY_IDS],
        "annotations": [
            {"id": n, "image_id": i, "category_id": c, "bbox": box,
             "area": float(box[2] * box[3]), "segmentation": polygon(*box), "iscrowd": 0}
            for n, (i, c, box) in enumerate(objects, 1)
        ],
    }
    path.write_text(json.dumps(instances))
    return path


@pytest.fixture
def annotations(tmp_path):
    return _write_instances(tmp_path / "instances_val.json")


def _prediction(boxes, labels, scores, masks=None):
    out = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "scores": torch.tensor(scores, dtype=torch.float32),
    }
    if masks is not None:
        out["masks"] = masks
    return out


def _ground_truth_prediction(annotations, image_id):
    """The image's ground truth as a detector's output: xyxy boxes, labels, score 1, masks."""
    gt = load_ground_truth(annotations)
    anns = gt.loadAnns(gt.getAnnIds(imgIds=[image_id]))
    boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
    labels = [CATEGORY_IDS.index(a["category_id"]) + 1 for a in anns]
    height, width = IMAGES[image_id]
    masks = torch.stack([
        torch.from_numpy(decode_segmentation(a["segmentation"], height, width)).float()
        for a in anns
    ])[:, None]
    return _prediction(boxes, labels, [1.0] * len(anns), masks)


def _score(annotations, outputs, masks=False):
    """Run the evaluator on one batch per image: ``outputs`` maps image id -> prediction."""
    evaluator = CocoEvaluator(annotations, CATEGORY_IDS, masks=masks)
    for image_id, prediction in outputs.items():
        evaluator.update((None, [{"image_id": image_id}]), [prediction])
    return evaluator.compute(SINGLE)


def test_ground_truth_as_predictions_scores_100_for_boxes_and_masks(annotations):
    outputs = {i: _ground_truth_prediction(annotations, i) for i in IMAGES}
    row = _score(annotations, outputs, masks=True)
    assert list(row) == list(ap_keys(masks=True))
    for kind in ("box", "mask"):
        for suffix in ("ap", "ap50", "ap75", "aps", "apm"):
            assert row[f"{kind}_{suffix}"] == pytest.approx(100.0), (kind, suffix)
        assert math.isnan(row[f"{kind}_apl"])  # no large object: COCOeval's -1


def _one_image(tmp_path):
    """Image 12 alone: two ground-truth boxes of category 3, both small."""
    objects = [(12, 3, [0, 0, 10, 10]), (12, 3, [20, 20, 10, 10])]
    return _write_instances(tmp_path / "one.json", objects)


def test_hand_computed_true_and_false_positive(tmp_path):
    """A true positive (score 0.9) and a false positive (0.8) for 2 ground-truth boxes:
    precision 1 up to recall 1/2, nothing after, at every IoU threshold. COCO's 101-point
    interpolation: recall points 0, 0.01, ..., 0.5 (51 of 101) have precision 1, so
    AP = 51/101. With the scores swapped the true positive comes second (precision 1/2 at
    recall 1/2) and AP = 51 * 0.5 / 101."""
    path = _one_image(tmp_path)
    hit, miss = [0, 0, 10, 10], [50, 50, 60, 60]
    row = _score(path, {12: _prediction([hit, miss], [1, 1], [0.9, 0.8])})
    for key in ("box_ap", "box_ap50", "box_ap75", "box_aps"):
        assert row[key] == pytest.approx(100 * 51 / 101), key
    assert math.isnan(row["box_apm"]) and math.isnan(row["box_apl"])
    swapped = _score(path, {12: _prediction([hit, miss], [1, 1], [0.8, 0.9])})
    assert swapped["box_ap"] == pytest.approx(100 * 51 * 0.5 / 101)


def test_hand_computed_iou_thresholds_and_wrong_category(tmp_path):
    """One detection with IoU 0.62 to a ground-truth box (a true positive at thresholds
    0.50, 0.55 and 0.60, 3 of 10) and one exact box of the wrong category (no ground truth
    of that category: ignored by the per-category average): AP50 = 51/101, AP75 = 0,
    AP = 3/10 * 51/101."""
    path = _one_image(tmp_path)
    row = _score(path, {12: _prediction([[0, 0, 10, 6.2], [20, 20, 30, 30]], [1, 2],
                                        [0.9, 0.95])})
    assert row["box_ap50"] == pytest.approx(100 * 51 / 101)
    assert row["box_ap75"] == 0.0
    assert row["box_ap"] == pytest.approx(100 * 0.3 * 51 / 101)


def test_no_detections_score_zero(annotations):
    empty = _prediction([], [], [], torch.zeros(0, 1, 60, 80))
    row = _score(annotations, {7: empty, 12: dict(empty, masks=torch.zeros(0, 1, 30, 30))},
                 masks=True)
    for kind in ("box", "mask"):
        assert row[f"{kind}_ap"] == row[f"{kind}_ap50"] == row[f"{kind}_aps"] == 0.0
        assert math.isnan(row[f"{kind}_apl"])


def test_only_evaluated_images_count(annotations):
    """Image 7 predicted perfectly: 100 when only image 7 was evaluated (image 12's ground
    truth does not count), less when image 12 was evaluated with no detections."""
    perfect = _ground_truth_prediction(annotations, 7)
    assert _score(annotations, {7: perfect}, masks=True)["box_ap"] == pytest.approx(100.0)
    empty = _prediction([], [], [], torch.zeros(0, 1, 30, 30))
    both = _score(annotations, {7: perfect, 12: empty}, masks=True)
    assert 0.0 < both["box_ap"] < 100.0 and 0.0 < both["mask_ap"] < 100.0


def test_an_image_recorded_twice_counts_once(annotations):
    evaluator = CocoEvaluator(annotations, CATEGORY_IDS)
    evaluator.update((None, [{"image_id": 7}]), [_ground_truth_prediction(annotations, 7)])
    evaluator.update((None, [{"image_id": 7}]), [_prediction([], [], [])])
    assert evaluator.compute(SINGLE)["box_ap"] == pytest.approx(100.0)


def test_records_are_xywh_category_ids_and_masks_above_one_half(annotations):
    evaluator = CocoEvaluator(annotations, CATEGORY_IDS, masks=True)
    masks = torch.tensor([[0.2, 0.6], [0.5, 0.9]])[None, None]
    evaluator.update((None, [{"image_id": torch.tensor(7)}]),
                     [_prediction([[1, 2, 4, 8]], [2], [0.5], masks)])
    (record,) = evaluator.records
    assert record["image_id"] == 7
    assert record["boxes"].tolist() == [[1, 2, 3, 6]]
    assert record["category_ids"].tolist() == [9]
    assert record["masks"] == encode_masks(torch.tensor([[[0.0, 1.0], [0.0, 1.0]]]))


def test_unknown_image_and_no_images_are_errors(annotations):
    with pytest.raises(ValueError, match="no image id 99"):
        _score(annotations, {99: _prediction([], [], [])})
    with pytest.raises(ValueError, match="yielded no images"):
        _score(annotations, {})
