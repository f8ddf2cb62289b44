"""The shipped COCO detection recipes: true to the SN paper's settings 1-3 (Sec. 4.2.1),
their tiny variants the same detectors on the built-in set, and every paper-scale recipe
and every row of Tables IV-VI starts and trains 2 iterations.

The 2-iteration runs keep each recipe and row as shipped (detector, norms per component,
frozen BN, ImageNet weights from ``pretrained/``, optimizer, schedule, warm-up, statistics)
but read the built-in ``coco_sample`` in batches of 2 with a ResNet-18 backbone at 96-128
pixels, fewer proposals and detections and narrower heads, so the whole set takes about
half a minute on a CPU.
"""

from __future__ import annotations

import pytest

from normlab.experiments import get_experiment, plan_runs
from normlab.train import config_to_dict, list_configs, load_config, train
from normlab.train.factory import build_model, build_optimizer
from tests.models.helpers import on_meta

RECIPES = {  # name: (model, images per batch, lr, shorter / longer side, epochs, decays)
    "sn_coco_fasterrcnn_c4": ("fasterrcnn_c4_resnet50", 12, 0.01, (600, 1000), 12, [8]),
    "sn_coco_fasterrcnn_fpn": ("fasterrcnn_fpn_resnet50", 16, 0.02, (800, 1333), 12, [8, 11]),
    "sn_coco_maskrcnn_fpn": ("maskrcnn_fpn_resnet50", 16, 0.02, (800, 1333), 24, [16, 22]),
}
TABLES = ("sn_table4_coco_fasterrcnn_c4", "sn_table5_coco_fasterrcnn_fpn",
          "sn_table6_coco_maskrcnn_fpn")
SMALL = (
    "data.name=coco_sample", "data.root=null", "data.train_split=train",
    "data.test_split=val", "data.batch_size=2", "data.eval_batch_size=2", "data.workers=0",
    "train.epochs=1", "train.limit_batches=2", "train.device=cpu", "run.progress=false",
    "model.kwargs.backbone=resnet18", "model.kwargs.min_size=96", "model.kwargs.max_size=128",
    "model.kwargs.rpn_pre_nms_top_n_train=100", "model.kwargs.rpn_post_nms_top_n_train=50",
    "model.kwargs.rpn_pre_nms_top_n_test=50", "model.kwargs.rpn_post_nms_top_n_test=20",
    "model.kwargs.box_batch_size_per_image=16", "model.kwargs.box_detections_per_img=10",
)
"""What the 2-iteration runs change: the data, the batch, the backbone's depth and the
image size, the proposals and the detections kept per image (everything else as shipped)."""
NARROW = {
    "c4": ("model.kwargs.roi_size=8",),
    "fpn": ("model.kwargs.fpn_channels=64", "model.kwargs.representation_size=128"),
}
"""And the heads' size: C4's RoI side, the FPN's and heads' widths (their layers and norms
as shipped; 64 channels keep GN's 32 groups)."""


def _small(name: str) -> list[str]:
    """:data:`SMALL` and the :data:`NARROW` settings of recipe or table ``name``."""
    return [*SMALL, *NARROW["c4" if "_c4" in name else "fpn"]]


def test_the_detection_recipes_are_shipped_with_tiny_variants():
    coco = [name for name in list_configs() if "_coco_" in name]
    assert sorted(coco) == sorted([*RECIPES, *(f"{name}_tiny" for name in RECIPES)])


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_follows_the_papers_setting(name):
    model, batch, lr, (short, long), epochs, decays = RECIPES[name]
    config = load_config(name)
    assert (config.task, config.model.name, config.model.norm) == ("detection", model, "sn")
    kwargs = config.model.kwargs
    assert (kwargs["min_size"], kwargs["max_size"], kwargs["frozen_norm"]) == (short, long, False)
    assert kwargs["pretrained"] == "pretrained/imagenet_resnet50_sn.pth"  # SN(8,32)
    assert kwargs.get("head_norm") == (None if "c4" in name else "sn")
    data = config.data
    assert (data.name, data.root, data.train_split, data.test_split, data.loader) == (
        "coco", "data/coco", "train2017", "val2017", "stream")
    assert data.batch_size == batch and data.augment  # the global batch; flips
    optim = config.optim
    assert (optim.lr, optim.lr_reference_batch, optim.momentum, optim.weight_decay) == (
        lr, batch, 0.9, 1e-4)
    assert optim.param_groups == {"role_weight_decay": {"switch": 0.0}}  # none on the ratios
    schedule = config.schedule
    assert (config.train.epochs, schedule.name, schedule.milestones, schedule.gamma) == (
        epochs, "multistep", decays, 0.1)
    if "c4" in name:  # setting-1's implementation has no warm-up
        assert schedule.warmup_epochs == 0
    else:  # Detectron: 500 iterations of 16 images (of 117,266) from a third of the rate
        assert schedule.warmup_epochs == pytest.approx(500 * 16 / 117_266, abs=1e-3)
        assert schedule.warmup_start_factor == 0.333
    assert (config.train.sync_stats, config.eval.statistics) == (False, "moving_average")
    assert "paper" in config.description.lower()


@pytest.mark.parametrize("name", RECIPES)
def test_tiny_variant_is_the_same_detector_on_the_built_in_set(name):
    full, tiny = load_config(name), load_config(f"{name}_tiny")
    assert (tiny.task, tiny.model.name, tiny.model.norm) == ("detection", full.model.name, "sn")
    for key in ("frozen_norm", "head_norm"):
        assert tiny.model.kwargs.get(key) == full.model.kwargs.get(key), key
    assert (tiny.model.kwargs["backbone"], tiny.model.kwargs["pretrained"]) == ("resnet18", None)
    assert (tiny.data.name, tiny.data.root, tiny.data.batch_size) == ("coco_sample", None, 2)
    assert (tiny.optim.weight_decay, tiny.optim.param_groups) == (
        full.optim.weight_decay, full.optim.param_groups)
    assert tiny.eval.statistics == full.eval.statistics
    assert tiny.train.sync_stats == full.train.sync_stats
    if "c4" in name:  # res5 on 4x4 RoIs (2x2 out) instead of 14x14: the tiny run's cost
        assert tiny.model.kwargs["roi_size"] == 4 and "roi_size" not in full.model.kwargs
        model = build_model(tiny.model, num_classes=5, in_chans=3)
        assert model.roi_heads.box_roi_pool.output_size == (4, 4)


def test_sn_ratios_have_no_weight_decay_and_the_rest_has_the_papers():
    config = load_config("sn_coco_maskrcnn_fpn_tiny")
    with on_meta():
        model = build_model(config.model, num_classes=5, in_chans=3)
    groups = {g["role"]: g for g in build_optimizer(model, config.optim, 2).param_groups}
    assert groups["switch"]["weight_decay"] == 0.0
    assert groups["default"]["weight_decay"] == groups["affine"]["weight_decay"] == 1e-4


def _full_scale_runs() -> dict[str, object]:
    """Every paper-scale recipe and table row with :func:`_small`, one per distinct config."""
    runs = {name: load_config(name, _small(name)) for name in RECIPES}
    for table in TABLES:
        for run in plan_runs(get_experiment(table), scale="full", seeds=(0,), out="unused",
                             overrides=_small(table)):
            runs[f"{table.split('_')[1]} {run.cell[0]}"] = run.config
    distinct: dict[str, object] = {}
    seen: list[dict] = []
    for label, config in runs.items():
        data = config_to_dict(config)
        data.pop("run")
        if data not in seen:
            seen.append(data)
            distinct[label] = config
    return distinct


FULL_RUNS = _full_scale_runs()


@pytest.fixture
def imagenet_weights(resnet18_weights, tmp_path, monkeypatch):
    """``pretrained/imagenet_resnet50_<norm>.pth`` under the working directory (a link to
    :func:`resnet18_weights`: the runs' backbone)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pretrained").symlink_to(resnet18_weights, target_is_directory=True)


@pytest.mark.slow
@pytest.mark.parametrize("label", FULL_RUNS)
def test_every_paper_scale_recipe_and_table_row_trains_two_iterations(label, imagenet_weights,
                                                                     tmp_path):
    config = FULL_RUNS[label]
    summary = train(config, run_dir=tmp_path / "run", progress=False, log=None)
    assert (summary["status"], summary["epochs_done"], summary["limit_batches"]) == (
        "completed", 1, 2)
    keys = ["final_box_ap", *(["final_mask_ap"] if "maskrcnn" in config.model.name else [])]
    for key in keys:
        assert 0.0 <= summary[key] <= 100.0, key
