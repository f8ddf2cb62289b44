"""The shipped ImageNet recipes: true to their papers' lines, and every one of them runs.

Each recipe (the paper-scale one and its tiny variant) streams an ImageNet-format folder
with the ImageNet transform presets; the SN recipes compute statistics per 32 samples and
evaluate with the batch average; every recipe trains 2 batches (``--limit-batches 2``) on a
generated sample folder, the paper-scale ones with a ResNet-18 in batches of 8 (norm,
transforms, statistics settings and loader kept).
"""

from __future__ import annotations

import json

import pytest

from normlab.cli import main
from normlab.train import list_configs, load_config
from normlab.train.factory import build_model, build_optimizer
from tests.models.helpers import on_meta

IMAGENET = [name for name in list_configs() if "imagenet" in name]
FULL = [name for name in IMAGENET if not name.endswith("_tiny")]
SN = [name for name in FULL if name.startswith("sn_")]


def test_the_papers_imagenet_recipes_are_shipped_with_tiny_variants():
    assert set(FULL) == {
        "iebn_imagenet_resnet34", "iebn_imagenet_resnet50", "iebn_imagenet_resnet152",
        "iebn_imagenet_resnext50_32x4d", "sn_imagenet_resnet50_step",
        "sn_imagenet_resnet50_cosine", "bin_imagenet_resnet18",
    }
    assert sorted(IMAGENET) == sorted(FULL + [f"{name}_tiny" for name in FULL])


@pytest.mark.parametrize("name", IMAGENET)
def test_recipe_streams_an_image_folder_with_the_imagenet_presets(name):
    config = load_config(name)
    data = config.data
    assert (data.name, data.loader, data.train_split, data.test_split) == (
        "imagefolder", "stream", "train", "val")
    expected = "imagenet_train_lighting" if name.startswith("sn_") else "imagenet_train"
    assert (data.train_preset, data.eval_preset) == (expected, "imagenet_eval")
    assert config.train.label_smoothing == 0  # none of the three papers smooths labels
    assert "norm_weight_decay" not in config.optim.param_groups  # SN: decay on all
    if name.endswith("_tiny"):
        assert data.root is None  # given at run time: --set data.root=...
        assert "normlab data sample OUT" in config.description
    else:
        assert (data.root, data.batch_size, data.kwargs["size"]) == ("data/imagenet", 256, 224)
        assert "paper" in config.description


@pytest.mark.parametrize("name", SN)
def test_sn_recipes_normalize_per_gpu_of_32_and_evaluate_with_the_batch_average(name):
    """SN paper Sec. 4.1.1: (8, 32) -- "the gradients are aggregated over all GPUs, and the
    means and variances ... are computed in each GPU"; Sec. 3.1: "BN uses batch average"."""
    config = load_config(name)
    assert config.data.batch_size // config.model.virtual_batch_size == 8
    assert config.model.virtual_batch_size == 32
    assert config.train.sync_stats is False  # under torchrun: per-process groups of 32
    assert (config.eval.statistics, config.eval.stats_batches) == ("batch_average", 200)
    assert config.optim.lr_reference_batch == 256 and config.optim.weight_decay == 1e-4
    assert "computed in each GPU" in config.description
    tiny = load_config(f"{name}_tiny")
    assert (tiny.model.virtual_batch_size, tiny.train.sync_stats) == (32, False)
    assert tiny.eval.statistics == "batch_average"


@pytest.mark.parametrize("name", [n for n in IMAGENET if not n.startswith("sn_")])
def test_the_other_recipes_keep_torch_statistics(name):
    config = load_config(name)
    assert config.model.virtual_batch_size is None and config.train.sync_stats
    assert config.eval.statistics == "moving_average"


def test_bin_imagenet_recipe_trains_the_gates_as_the_paper():
    config = load_config("bin_imagenet_resnet18")
    assert (config.model.name, config.model.norm, config.train.epochs) == (
        "resnet18", "bin", 90)
    assert config.schedule.milestones == [30, 60] and config.optim.lr == 0.1
    with on_meta():
        model = build_model(config.model, num_classes=1000, in_chans=3)
    groups = {g["role"]: g for g in build_optimizer(model, config.optim, 256).param_groups}
    assert (groups["gate"]["lr"], groups["gate"]["weight_decay"]) == (1.0, 0.0)
    assert (groups["affine"]["lr"], groups["affine"]["weight_decay"]) == (0.1, 1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", IMAGENET)
def test_every_imagenet_recipe_trains_two_batches_on_a_sample_folder(name, sample_folder,
                                                                       tmp_path, capsys):
    argv = ["train", "-c", name, "-q", "--limit-batches", "2", "--set",
            f"data.root={sample_folder}", "train.device=cpu", f"run.out_dir={tmp_path}",
            "run.name=run", f"data.cache_dir={tmp_path / 'cache'}", "data.workers=1"]
    if name in FULL:  # the paper's network, batch and image size would take minutes on a CPU
        argv += ["model.name=resnet18", "data.batch_size=8", "data.kwargs.size=64"]
    assert main(argv) == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["status"], summary["epochs_done"], summary["limit_batches"]) == (
        "completed", 1, 2)
    assert summary["eval_statistics"] == load_config(name).eval.statistics
    (row,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert row.get("eval_stats_batches", 2) == 2
