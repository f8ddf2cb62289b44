"""The detection task: a tiny Mask R-CNN with SN trained on the built-in COCO-format set
through ``normlab.train``, resumed exactly, with COCO AP and the SN ratios of each
component in its rows; and the task's pieces (options refused, loss averages, micro-batches,
pretrained run folders, ratios)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from normlab.models import create_model
from normlab.tasks.coco_eval import ap_keys
from normlab.tasks.detection import (
    LOSS_TERMS,
    DetectionLosses,
    DetectionTask,
    predicts_masks,
    sn_ratios,
)
from normlab.train import ConfigError, config_from_dict, load_checkpoint, resume, train
from normlab.train.factory import Loaders
from normlab.train.parallel import SINGLE
from normlab.train.task import StepResult, get_task

from ..train.tiny import one_thread

__all__ = ["one_thread"]

MASK = "maskrcnn_fpn_resnet50"
TINY = {  # a ResNet-18 Mask R-CNN on 64-96 px images with small heads and few samples
    "backbone": "resnet18", "min_size": 64, "max_size": 96, "head_norm": "sn",
    "fpn_channels": 16, "representation_size": 32, "head_convs": 2, "mask_convs": 2,
    "rpn_pre_nms_top_n_train": 200, "rpn_post_nms_top_n_train": 50,
    "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 50,
    "rpn_batch_size_per_image": 64, "box_batch_size_per_image": 16,
    "box_detections_per_img": 20,
}
COMPONENTS = {  # component -> state-dict prefix of its layers
    "backbone": "backbone.body.", "fpn": "backbone.fpn.", "rpn": "rpn.",
    "box_head": "roi_heads.box_head.", "mask_head": "roi_heads.mask_head.",
}


def _config(out, name="tiny", epochs=2, **sections):
    raw = {
        "task": "detection",
        "model": {"name": MASK, "norm": "sn", "kwargs": TINY},
        "data": {"name": "coco_sample", "test_split": "val", "batch_size": 2,
                 "loader": "stream", "workers": 0},
        "optim": {"lr": 0.02, "weight_decay": 1e-4},
        "schedule": {"name": "multistep", "milestones": [1]},
        "train": {"epochs": epochs, "device": "cpu", "seed": 0, "limit_batches": 2},
        "run": {"out_dir": str(out), "name": name, "progress": False},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return config_from_dict(raw)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("detection")
    torch.set_num_threads(1)
    train(_config(out, "straight"), log=None)
    train(_config(out, "resumed", epochs=1), log=None)
    resume(out / "resumed", overrides=["train.epochs=2"], log=None)
    with pytest.raises(KeyboardInterrupt):  # after step 1 of epoch 2, checkpointed
        train(_config(out, "stopped", run={"checkpoint_every": 1}), log=None,
              callbacks=[_stop_at(epoch=1, step=0)])
    lines = []
    resume(out / "stopped", log=lines.append)
    assert "at epoch 1, step 1 of epoch 2" in lines[0]
    return out


def _stop_at(epoch, step):
    def stop(info):
        if (info.epoch, info.step) == (epoch, step):
            raise KeyboardInterrupt

    return stop


def _ratios_from_weights(state):
    """Softmax of every SN layer's logits, averaged per component, from a state dict."""
    ratios = {}
    for component, prefix in COMPONENTS.items():
        logits = {kind: [v for k, v in state.items()
                         if k.startswith(prefix) and k.endswith(f".{kind}_weight")]
                  for kind in ("mean", "var")}
        if logits["mean"]:
            ratios[component] = {
                kind: torch.stack([t.softmax(0) for t in ts]).mean(0).tolist()
                for kind, ts in logits.items()
            }
    return ratios


@pytest.mark.slow
def test_trains_scores_ap_and_records_each_components_sn_ratios(runs):
    summary = json.loads((runs / "straight" / "summary.json").read_text())
    rows = [json.loads(line) for line in (runs / "straight" / "metrics.jsonl").open()]
    assert summary["status"] == "completed" and len(rows) == 2
    for key in ap_keys(masks=True):
        value = summary[f"final_{key}"]
        assert value == pytest.approx(rows[-1][key], nan_ok=True), key
        assert math.isnan(value) or 0.0 <= value <= 100.0, key
    assert summary["best_box_ap"] == max(r["box_ap"] for r in rows)
    for term in ("loss", *LOSS_TERMS, "loss_mask"):
        assert math.isfinite(rows[-1][f"train_{term}"]) and rows[-1][f"train_{term}"] > 0
    state = load_checkpoint(runs / "straight" / "last.pt")["model"]
    recorded = rows[-1]["sn_ratios"]
    assert list(recorded) == ["backbone", "fpn", "box_head", "mask_head"]  # the RPN has no norm
    expected = _ratios_from_weights(state)
    for component, ratios in recorded.items():
        for kind in ("mean", "var"):
            assert ratios[kind] == pytest.approx(expected[component][kind], abs=1e-6)
            assert sum(ratios[kind]) == pytest.approx(1.0, abs=1e-6)
    assert rows[0]["sn_ratios"] != rows[1]["sn_ratios"]  # training moved the ratios


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resumed", "stopped"])
def test_resumed_run_reaches_the_same_weights_and_rows(runs, name):
    """Seeded flips and RoI/anchor samples per image: 1 epoch + resume + 1 epoch, and a run
    stopped inside epoch 2 and resumed from its checkpoint there, are the 2-epoch run, bit
    for bit."""
    straight = load_checkpoint(runs / "straight" / "last.pt")["model"]
    resumed = load_checkpoint(runs / name / "last.pt")["model"]
    for key, value in straight.items():
        assert torch.equal(resumed[key], value), key
    lines = [[json.loads(line) for line in (runs / run / "metrics.jsonl").open()]
             for run in ("straight", name)]
    assert len(lines[1]) == 2
    for a, b in zip(*lines):
        for key in ("train_loss", "box_ap", "mask_ap", "sn_ratios"):
            assert a[key] == b[key], key


def test_batch_average_statistics_and_virtual_batches_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="eval.statistics=batch_average: task 'detection' "
                       "cannot re-estimate norm statistics"):
        train(_config(tmp_path, eval={"statistics": "batch_average"}), progress=False)
    with pytest.raises(ConfigError, match="virtual_batch_size"):
        DetectionTask.from_config(_config(tmp_path, model={"virtual_batch_size": 1}))


def test_masks_follow_the_model_name(tmp_path):
    assert get_task("detection") is DetectionTask
    assert DetectionTask.from_config(_config(tmp_path)).masks
    assert predicts_masks(MASK) and not predicts_masks("fasterrcnn_fpn_resnet50")
    assert DetectionTask().train_metric(torch.device("cpu")).terms == LOSS_TERMS


def test_coco_from_disk_needs_a_root_and_the_task_decides_masks(tmp_path):
    task = DetectionTask()
    config = _config(tmp_path, data={"name": "coco", "train_split": "train2017",
                                     "test_split": "val2017"})
    with pytest.raises(ConfigError, match="data.root is not set"):
        task.build_loaders(config.data, seed=0, device=torch.device("cpu"))
    config = _config(tmp_path, data={"kwargs": {"masks": False}})
    with pytest.raises(ConfigError, match="data.kwargs.masks is set by the detection task"):
        task.build_loaders(config.data, seed=0, device=torch.device("cpu"))


def test_losses_are_averaged_over_images():
    metric = DetectionLosses(torch.device("cpu"), ("loss_a",))
    for images, loss, term in ((3, 2.0, 0.5), (1, 6.0, 1.5)):
        batch = ([torch.zeros(3, 4, 4)] * images, [{}] * images)
        metric.update(batch, StepResult(torch.tensor(loss), {"loss_a": torch.tensor(term)}))
    row = metric.compute(SINGLE)
    assert row == pytest.approx({"train_loss": (3 * 2 + 6) / 4, "train_loss_a": (1.5 + 1.5) / 4})


def test_micro_batches_split_images_and_targets_alike():
    images = [torch.full((3, 2, 2), float(i)) for i in range(5)]
    targets = [{"image_id": i} for i in range(5)]
    parts = DetectionTask().split_batch((images, targets), 2)
    assert [[t["image_id"] for t in p[1]] for p in parts] == [[0, 1, 2], [3, 4]]
    assert [[int(x[0, 0, 0]) for x in p[0]] for p in parts] == [[0, 1, 2], [3, 4]]
    assert DetectionTask().batch_size((images, targets)) == 5


def test_sn_ratios_average_each_components_layers():
    model = create_model(MASK, num_classes=3, norm="sn", **TINY)
    with torch.no_grad():
        for name, module in model.named_modules():
            if hasattr(module, "mean_weight"):
                high = 1 if name.startswith("roi_heads.mask_head") else 2  # LN / BN
                module.mean_weight.copy_(torch.tensor([0.0, 0.0, 0.0]))
                module.mean_weight[high] = math.log(2.0)  # ratios 1/4, 1/4, 1/2
    ratios = DetectionTask().epoch_record(model)["sn_ratios"]
    assert ratios["backbone"]["mean"] == pytest.approx([0.25, 0.25, 0.5])
    assert ratios["mask_head"]["mean"] == pytest.approx([0.25, 0.5, 0.25])
    assert ratios["box_head"]["var"] == pytest.approx([1 / 3] * 3)


def test_a_model_without_sn_records_nothing():
    model = create_model("fasterrcnn_c4_resnet50", num_classes=3, norm="bn",
                         backbone="resnet18", min_size=64, max_size=96)
    assert DetectionTask().epoch_record(model) == {}
    assert sn_ratios(model) == {}


def test_ratios_of_layers_without_bn_count_zero_for_bn():
    model = create_model("fasterrcnn_c4_resnet50", num_classes=3, norm="sn",
                         backbone="resnet18", norm_kwargs={"using_bn": False})
    ratios = sn_ratios(model)
    assert ratios["backbone"] == {"mean": [0.5, 0.5, 0.0], "var": [0.5, 0.5, 0.0]}
    assert list(ratios) == ["backbone", "box_head"]  # C4: the box head is res5


def test_pretrained_run_folder_loads_its_last_checkpoint(tmp_path):
    resnet = create_model("resnet18", num_classes=10, norm="sn")
    folder = tmp_path / "imagenet-run"
    folder.mkdir()
    torch.save({"model": resnet.state_dict(), "epoch": 3}, folder / "last.pt")
    config = _config(tmp_path, model={"kwargs": {**TINY, "pretrained": str(folder)}})
    task = DetectionTask.from_config(config)
    model = task.build_model(config.model, num_classes=3, in_chans=3)
    torch.testing.assert_close(model.backbone.body.conv1.weight, resnet.conv1.weight)
    assert task.detector is model


def test_summary_and_epoch_line_report_box_and_mask_ap():
    row = {"epoch": 2, "lr": 0.02, "train_loss": 1.5, "time_s": 3.0,
           **{key: 10.0 for key in ap_keys(masks=True)}}
    summary = DetectionTask(masks=True).summary(row, 12.5)
    assert summary["final_mask_apl"] == 10.0 and summary["best_box_ap"] == 12.5
    assert summary["final_train_loss"] == 1.5
    line = DetectionTask(masks=True).epoch_line(row, 12, 12.5)
    assert "box AP 10.00 (best 12.50) mask AP 10.00" in line


def test_evaluation_scores_the_test_sources_annotations(tmp_path):
    task = DetectionTask()
    data = _config(tmp_path, data={"cache_dir": str(tmp_path / "index")}).data
    loaders = task.build_loaders(data, seed=0, device=torch.device("cpu"))
    assert list((tmp_path / "index").iterdir())  # the indexes are cached where asked
    assert isinstance(loaders, Loaders) and loaders.num_classes == len(
        loaders.train.source.classes) + 1
    metric = task.eval_metric(loaders, torch.device("cpu"))
    assert metric.annotation_file == loaders.test.source.annotation_file
    assert metric.annotation_file.name == "instances_val.json" and not metric.masks


def test_training_step_seeds_each_images_sampling_and_sums_the_terms():
    model = create_model(MASK, num_classes=3, norm="sn", **TINY).train()
    images = [torch.rand(3, 64, 80), torch.rand(3, 72, 64)]
    masks = torch.zeros(1, 64, 80, dtype=torch.uint8)
    masks[0, 10:30, 20:50] = 1
    targets = [
        {"boxes": torch.tensor([[20.0, 10.0, 50.0, 30.0]]), "labels": torch.tensor([1]),
         "masks": masks, "image_id": 1, "seed": 5},
        {"boxes": torch.tensor([[5.0, 5.0, 40.0, 60.0]]), "labels": torch.tensor([2]),
         "masks": torch.ones(1, 72, 64, dtype=torch.uint8), "image_id": 2, "seed": 7},
    ]
    result = DetectionTask(masks=True).training_step(model, (images, targets))
    samplers = [model.rpn.fg_bg_sampler, model.roi_heads.fg_bg_sampler]
    assert [s.seeds for s in samplers] == [(5, 7), (5, 7)]
    assert sorted(result.output) == sorted((*LOSS_TERMS, "loss_mask"))
    assert result.loss.item() == pytest.approx(sum(v.item() for v in result.output.values()))
    assert result.loss.requires_grad and not any(v.requires_grad for v in result.output.values())


def test_an_empty_share_of_an_evaluation_batch_predicts_nothing():
    def forward(images):
        raise AssertionError("a detector cannot batch no images")

    assert DetectionTask().eval_step(forward, ([], [])) == []
