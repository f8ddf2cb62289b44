"""The registered paper tables: every cell resolves to a config whose model builds, at both
scales, and the layouts carry the paper's numbers where the paper has them."""

from __future__ import annotations

import dataclasses

import pytest

from normlab.experiments import SCALES, get_experiment, list_experiments, plan_runs
from normlab.experiments.registry import RUN
from normlab.norms import NormBase
from normlab.train.factory import build_model
from tests.models.helpers import on_meta

NAMES = list_experiments()


def test_the_papers_tables_are_registered():
    assert {"iebn_table1_cifar", "iebn_table2_constant_noise", "iebn_table3_mix_datasets",
            "iebn_fig4_activation", "sn_table2_batch_sizes", "bin_table1_cifar",
            "bin_cifar100_architectures"} <= set(NAMES)
    with pytest.raises(KeyError, match="unknown experiment 'nope'; known: bin_cifar100_arch"):
        get_experiment("nope")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", SCALES)
def test_every_cell_resolves_and_its_model_builds(name, scale, tmp_path):
    experiment = get_experiment(name)
    runs = plan_runs(experiment, scale=scale, seeds=(0,), out=tmp_path)
    assert runs, f"{name} has no runs at the {scale} scale"
    built = {}
    for run in runs:
        model = run.config.model
        key = (model.name, model.norm, repr(model.kwargs), repr(model.noise),
               model.virtual_batch_size)
        if key not in built:
            # the ImageNet weights a detector fine-tunes from are local files, not here
            model = dataclasses.replace(model, kwargs={**model.kwargs, "pretrained": None}) \
                if "pretrained" in model.kwargs else model
            with on_meta():
                built[key] = build_model(model, num_classes=100, in_chans=3)
        norms = [m for m in built[key].modules() if isinstance(m, NormBase)]
        assert norms, f"{run.cell}: no normlab norm in {model.name}"
        expected_noise = None if model.noise is None else tuple(model.noise)
        assert all(m.noise == expected_noise for m in norms), run.cell


@pytest.mark.parametrize("name", NAMES)
def test_paper_numbers_parse_and_cells_cover_them(name):
    from normlab.report.experiment import _number

    experiment = get_experiment(name)
    assert experiment.paper or experiment.curves, f"{name}: no numbers and no curves to show"
    for cell, text in experiment.paper.items():
        assert _number(text) is not None, (cell, text)
        run = (cell[0], RUN) if experiment.metrics else cell  # one run per row
        assert run in experiment.cells, f"{name}: the paper has {cell}, no run produces it"


def test_table_specific_settings_reach_the_configs(tmp_path):
    noise = {r.cell: r.config for r in plan_runs(get_experiment("iebn_table2_constant_noise"),
                                                 scale="full", seeds=(0,), out=tmp_path)}
    assert (noise[("(0.8, 0.8)", "SE")].model.noise, noise[("(0.8, 0.8)", "SE")].data.name) \
        == ([0.8, 0.8], "cifar100")
    assert noise[("(0.0, 0.0)", "IEBN")].model.noise is None
    sn = {r.cell: r.config for r in plan_runs(get_experiment("sn_table2_batch_sizes"),
                                              scale="full", seeds=(0,), out=tmp_path)}
    assert (sn[("BN", "(8, 2)")].data.batch_size, sn[("BN", "(8, 2)")].model.virtual_batch_size) \
        == (16, 2)
    assert sn[("SN", "(8, 1)")].model.kwargs["norm_kwargs"] == {"using_bn": False}
    assert {cell[0]: config.eval.statistics for cell, config in sn.items()} == {
        "BN": "moving_average", "GN": "moving_average", "SN": "batch_average"}
    assert {config.train.sync_stats for config in sn.values()} == {False}  # per GPU
    assert ("BN", "(8, 1)") not in sn
    tiny = {r.cell: r.config for r in plan_runs(get_experiment("sn_table2_batch_sizes"),
                                                scale="tiny", seeds=(0,), out=tmp_path)}
    assert (tiny[("GN", "(8, 32)")].data.batch_size,
            tiny[("GN", "(8, 32)")].model.virtual_batch_size) == (64, 32)
    mix = {r.cell: r.config for r in plan_runs(get_experiment("iebn_table3_mix_datasets"),
                                               scale="full", seeds=(0,), out=tmp_path)}
    assert mix[("C", "BN")].data.mix is None and mix[("C+3×F", "IEBN")].data.mix.k == 3
    assert mix[("C+3×F", "IEBN")].data.mix.dataset == "fashion_mnist"
