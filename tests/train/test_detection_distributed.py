"""Two detection training processes (gloo, CPU, as torchrun starts them) with synced SN
statistics (SyncSN) reach the weights of one process with the whole batch.

A tiny Mask R-CNN with SN in the backbone, FPN and heads trains 2 epochs of 2 steps on
64×64 images in COCO format (same size, so the detector pads no image differently when it
batches them): 2 processes × 1 image against 1 process × 2 images. The per-image sample
seeds make both runs sample the same anchors and RoIs; every image has the same number of
sampled anchors (64) and RoIs (8, 2 of them positive), so torchvision's losses, which are
means over the batch's samples, are the mean of the per-image losses in both runs.
The COCO evaluator of each process scores every process's images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from normlab.data.coco import index_coco
from normlab.tasks.coco_eval import CocoEvaluator
from normlab.train import config_from_dict, load_checkpoint, train
from normlab.train.parallel import SINGLE, from_environment, leave_process_group

from ..processes import run_processes

WORLD = 2
SIZE = 64
TINY = {
    "backbone": "resnet18", "min_size": SIZE, "max_size": SIZE, "head_norm": "sn",
    "fpn_channels": 16, "representation_size": 32, "head_convs": 2, "mask_convs": 2,
    "rpn_pre_nms_top_n_train": 300, "rpn_post_nms_top_n_train": 60,
    "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 50,
    "rpn_batch_size_per_image": 64, "box_batch_size_per_image": 8,
    "box_positive_fraction": 0.25, "box_detections_per_img": 20,
}


def _write_coco(root, seed=0):
    """``train`` (4 images) and ``val`` (3: the last evaluation batch of 1 leaves one
    process without an image) of 64×64 PNGs with 3 rectangles each, in two
    categories, boxes and polygon masks, as COCO instances files."""
    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    (root / "annotations").mkdir(parents=True)
    image_id, annotation_id = 0, 0
    for split, count in (("train", 4), ("val", 3)):
        (root / split).mkdir()
        images, annotations = [], []
        for _ in range(count):
            image_id += 1
            pixels = (torch.rand(SIZE, SIZE, 3, generator=generator) * 80).to(torch.uint8)
            for k in range(3):
                w, h = (int(v) for v in torch.randint(12, 28, (2,), generator=generator))
                x, y = (int(v) for v in torch.randint(0, SIZE - 28, (2,), generator=generator))
                pixels[y : y + h, x : x + w] = torch.tensor([200, 60 * k, 255 - 60 * k])
                annotation_id += 1
                annotations.append({
                    "id": annotation_id, "image_id": image_id, "category_id": 1 + k % 2,
                    "bbox": [x, y, w, h], "area": float(w * h), "iscrowd": 0,
                    "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
                })
            name = f"{image_id:04d}.png"
            Image.fromarray(pixels.numpy()).save(root / split / name)
            images.append({"id": image_id, "file_name": name, "height": SIZE, "width": SIZE})
        instances = {"images": images, "annotations": annotations,
                     "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(instances))
    return root


def _config(data_root, out):
    return config_from_dict({
        "task": "detection",
        "model": {"name": "maskrcnn_fpn_resnet50", "norm": "sn", "kwargs": TINY},
        "data": {"name": "coco", "root": str(data_root), "train_split": "train",
                 "test_split": "val", "batch_size": 2, "loader": "stream", "workers": 0},
        "optim": {"lr": 0.02, "weight_decay": 1e-4},
        "schedule": {"name": "multistep", "milestones": [1]},
        "train": {"epochs": 2, "device": "cpu", "seed": 5, "sync_stats": True},
        "run": {"out_dir": str(out), "progress": False},
    })


def _records(evaluator, source, images):
    """Image ``i`` of ``images`` predicted as its ground truth when ``i`` is even, with no
    detection when odd."""
    for i in images:
        target = source.target(i, masks=True) if i % 2 == 0 else {
            "boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64),
            "masks": np.zeros((0, SIZE, SIZE), np.uint8)}
        prediction = {"boxes": torch.from_numpy(target["boxes"]),
                      "labels": torch.from_numpy(target["labels"]),
                      "scores": torch.ones(len(target["labels"])),
                      "masks": torch.from_numpy(target["masks"]).float()[:, None]}
        evaluator.update((None, [{"image_id": source.image_id(i)}]), [prediction])


def _gathered_ap(rank: int, source, out: str) -> None:
    """Each process records its own image; the AP is scored on both."""
    parallel, _ = from_environment(torch.device("cpu"))
    evaluator = CocoEvaluator(source.annotation_file, source.category_ids, masks=True)
    _records(evaluator, source, [rank])
    row = evaluator.compute(parallel)
    (Path(out) / f"gathered-{rank}.json").write_text(json.dumps(row))


def _worker(rank: int, config, source, out: str) -> None:
    try:
        train(config, run_dir=f"{out}/two", log=None)
        _gathered_ap(rank, source, out)
    finally:
        leave_process_group()  # joined by train(); left here, as the CLI does


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("detection-parallel")
    config = _config(_write_coco(out / "coco"), out)
    source = index_coco(out / "coco", "val", masks=True)
    run_processes(_worker, (config, source, str(out)), world=WORLD,
                  logs=tmp_path_factory.mktemp("detection-parallel-logs"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(config, run_dir=out / "one", log=None)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.mark.slow
def test_two_processes_with_sync_sn_reach_the_weights_of_one(runs):
    one = load_checkpoint(runs / "one" / "last.pt")
    two = load_checkpoint(runs / "two" / "last.pt")
    assert one["epoch"] == two["epoch"] == 2
    for key, value in one["model"].items():
        torch.testing.assert_close(two["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    rows = [[json.loads(line) for line in (runs / name / "metrics.jsonl").open()]
            for name in ("one", "two")]
    for a, b in zip(*rows):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["train_loss_mask"] == pytest.approx(a["train_loss_mask"], rel=1e-4)
        assert b["sn_ratios"]["mask_head"]["mean"] == pytest.approx(
            a["sn_ratios"]["mask_head"]["mean"], rel=1e-4)
    summary = json.loads((runs / "two" / "summary.json").read_text())
    assert summary["processes"] == WORLD and summary["status"] == "completed"


@pytest.mark.slow
def test_coco_ap_is_scored_on_every_processs_images(runs):
    """Rank 0 predicts its image perfectly, rank 1 finds nothing in its own: both score
    the two images together, as one process with both records does (neither 100 nor 0)."""
    source = index_coco(runs / "coco", "val", masks=True)
    evaluator = CocoEvaluator(source.annotation_file, source.category_ids, masks=True)
    _records(evaluator, source, range(WORLD))
    expected = evaluator.compute(SINGLE)
    assert 0.0 < expected["box_ap"] < 100.0 and 0.0 < expected["mask_ap"] < 100.0
    for rank in range(WORLD):
        row = json.loads((runs / f"gathered-{rank}.json").read_text())
        assert row == pytest.approx(expected, nan_ok=True), rank
