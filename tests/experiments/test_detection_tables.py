"""The SN paper's COCO tables (IV-VI): laid out as the paper, one run per row, and each
row's norms per component reach its config at both scales."""

from __future__ import annotations

import pytest

from normlab.experiments import get_experiment, plan_runs
from normlab.experiments.registry import RUN

TABLES = {
    "sn_table4_coco_fasterrcnn_c4": (
        "sn_coco_fasterrcnn_c4",
        ("BN† / BN†", "BN / BN", "GN / GN", "SN / SN", "BN‡ / BN", "GN‡ / GN", "SN‡ / SN"),
        ("AP", "AP.5", "AP.75", "APl", "APm", "APs"),
    ),
    "sn_table5_coco_fasterrcnn_fpn": (
        "sn_coco_fasterrcnn_fpn",
        ("BN† / –", "BN† / GN", "BN† / SN", "GN / GN", "SN / SN"),
        ("AP", "AP.5", "AP.75", "APl", "APm", "APs"),
    ),
    "sn_table6_coco_maskrcnn_fpn": (
        "sn_coco_maskrcnn_fpn",
        ("BN† / –", "BN† / GN", "BN† / SN", "GN / GN", "GN / SN", "SN / SN"),
        ("box AP", "box AP.5", "box AP.75", "mask AP", "mask AP.5", "mask AP.75"),
    ),
}


@pytest.mark.parametrize("name", TABLES)
def test_tables_are_laid_out_as_the_paper_with_one_run_per_row(name):
    experiment = get_experiment(name)
    config, rows, columns = TABLES[name]
    assert (experiment.rows, experiment.columns) == (rows, columns)
    assert set(experiment.cells) == {(row, RUN) for row in rows}
    assert {cell.config for cell in experiment.cells.values()} == {config}
    assert len(experiment.paper) == len(rows) * len(columns)  # the paper has no blanks
    keys = list(experiment.metrics.values())
    assert keys[0] == "final_box_ap" and all(k.startswith("final_") for k in keys)
    assert ("final_mask_ap" in keys) == (name == "sn_table6_coco_maskrcnn_fpn")


def test_the_papers_numbers_are_where_the_paper_prints_them():
    c4 = get_experiment("sn_table4_coco_fasterrcnn_c4").paper
    assert (c4[("BN† / BN†", "AP")], c4[("SN / SN", "AP")], c4[("SN‡ / SN", "APs")]) == (
        "29.6", "33.0", "13.0")
    fpn = get_experiment("sn_table5_coco_fasterrcnn_fpn").paper
    assert (fpn[("BN† / –", "AP")], fpn[("SN / SN", "AP.5")]) == ("36.7", "60.9")
    mask = get_experiment("sn_table6_coco_maskrcnn_fpn").paper
    assert (mask[("SN / SN", "box AP")], mask[("SN / SN", "mask AP")],
            mask[("GN / SN", "mask AP.75")]) == ("41.0", "36.5", "38.1")


def _configs(name, scale, tmp_path):
    runs = plan_runs(get_experiment(name), scale=scale, seeds=(0,), out=tmp_path)
    return {run.cell[0]: run.config for run in runs}


def test_each_rows_norms_reach_its_config(tmp_path):
    fpn = _configs("sn_table6_coco_maskrcnn_fpn", "full", tmp_path)
    frozen = fpn["BN† / –"].model
    assert (frozen.norm, frozen.kwargs["frozen_norm"], frozen.kwargs["head_norm"]) == (
        "bn", True, None)
    assert frozen.kwargs["pretrained"] == "pretrained/imagenet_resnet50_bn.pth"
    mixed = fpn["GN / SN"].model
    assert (mixed.norm, mixed.kwargs["frozen_norm"], mixed.kwargs["head_norm"]) == (
        "gn", False, "sn")
    assert mixed.kwargs["pretrained"] == "pretrained/imagenet_resnet50_gn.pth"
    assert {c.train.epochs for c in fpn.values()} == {24}  # the 2x schedule
    c4 = _configs("sn_table4_coco_fasterrcnn_c4", "full", tmp_path)
    assert "head_norm" not in c4["SN / SN"].model.kwargs  # conv5 is normalized as the backbone
    assert (c4["BN / BN"].model.norm, c4["BN / BN"].model.kwargs["frozen_norm"]) == ("bn", False)
    scratch = c4["SN‡ / SN"]
    assert scratch.model.kwargs["pretrained"] is None
    assert (scratch.train.epochs, scratch.schedule.milestones) == (24, [16])  # "longer"
    assert (c4["SN / SN"].train.epochs, c4["SN / SN"].schedule.milestones) == (12, [8])


def test_the_tiny_scale_keeps_the_norms_and_leaves_out_the_scratch_rows(tmp_path):
    tiny = _configs("sn_table4_coco_fasterrcnn_c4", "tiny", tmp_path)
    assert list(tiny) == ["BN† / BN†", "BN / BN", "GN / GN", "SN / SN"]
    assert tiny["BN† / BN†"].model.kwargs["frozen_norm"] is True
    assert {c.data.name for c in tiny.values()} == {"coco_sample"}
    assert {c.model.kwargs["pretrained"] for c in tiny.values()} == {None}
    mask = _configs("sn_table6_coco_maskrcnn_fpn", "tiny", tmp_path)
    assert len(mask) == 6 and mask["BN† / GN"].model.kwargs["head_norm"] == "gn"
