"""Named experiments: planning, sweeping (skip, resume, restart, diverge) and the report."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from normlab.experiments import Cell, Experiment, plan_runs, run_experiment, run_status
from normlab.experiments.registry import tiny_variant
from normlab.report import collect_results, experiment_report
from normlab.train import ConfigError, load_checkpoint, train

from ..train.tiny import tiny_builders

RECIPE = {
    "model": {"name": "resnet20", "norm": "bn"},  # built by tiny_builders
    "data": {"batch_size": 16},
    "optim": {"lr": 0.1, "weight_decay": 5e-4},
    "schedule": {"name": "multistep", "milestones": [1], "gamma": 0.5},
    "train": {"epochs": 2, "device": "cpu"},
    "run": {"progress": False},
}


@pytest.fixture
def experiment(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    (tmp_path / "recipe_tiny.yaml").write_text(
        yaml.safe_dump({"base": "recipe.yaml", "optim": {"lr": 0.05}})
    )
    config = str(recipe)
    return Experiment(
        name="test_table",
        source="A paper, Table 9",
        title="BN against IEBN",
        rows=("tiny net", "other data"),
        columns=("BN", "IEBN"),
        cells={
            ("tiny net", "BN"): Cell(config, ("model.norm=bn",)),
            ("tiny net", "IEBN"): Cell(config, ("model.norm=iebn",)),
            ("other data", "IEBN"): Cell(config, ("model.norm=iebn",),
                                         full_overrides=("data.batch_size=32",), tiny=False),
        },
        paper={("tiny net", "BN"): "5.5", ("tiny net", "IEBN"): "4.9 ± 0.1"},
        notes="Read the columns.",
    )


def _sweep(experiment, out, **kw):
    kw.setdefault("seeds", (0, 1))
    return run_experiment(experiment, out=out, progress=False, log=lambda line: None,
                          builders=tiny_builders(), **kw)


def test_plan_resolves_every_cell_at_each_scale_in_reading_order(experiment, tmp_path):
    tiny = plan_runs(experiment, scale="tiny", seeds=(0, 1), out=tmp_path / "out",
                     overrides=("train.epochs=1",))
    assert [(r.cell, r.seed) for r in tiny] == [
        (("tiny net", "BN"), 0), (("tiny net", "BN"), 1),
        (("tiny net", "IEBN"), 0), (("tiny net", "IEBN"), 1),
    ]
    first = tiny[2]
    assert first.folder == tmp_path / "out/test_table/tiny/tiny-net--iebn/seed0"
    assert (first.config.model.norm, first.config.optim.lr) == ("iebn", 0.05)
    assert (first.config.train.epochs, first.config.train.seed) == (1, 0)
    full = plan_runs(experiment, scale="full", seeds=(3,), out=tmp_path / "out")
    assert [r.cell for r in full][-1] == ("other data", "IEBN")
    assert (full[-1].config.data.batch_size, full[-1].config.optim.lr) == (32, 0.1)


def test_cells_and_paper_numbers_must_lie_in_the_table():
    with pytest.raises(ValueError, match="not in the rows and columns"):
        Experiment("x", "s", "t", rows=("a",), columns=("b",), cells={},
                   paper={("a", "c"): "1.0"})
    with pytest.raises(ValueError, match="scale must be one of tiny, full"):
        Cell("c").at("huge")
    assert tiny_variant("iebn_cifar_resnet164") == "iebn_cifar_resnet164_tiny"
    assert tiny_variant("dir/r.yaml") == "dir/r_tiny.yaml"


def test_a_second_sweep_skips_what_is_finished(experiment, tmp_path):
    out = tmp_path / "out"
    assert _sweep(experiment, out) == {"trained": 4, "resumed": 0, "skipped": 0, "diverged": 0}
    last = out / "test_table/tiny/tiny-net--bn/seed1/last.pt"
    stamp = last.stat().st_mtime_ns
    assert _sweep(experiment, out) == {"trained": 0, "resumed": 0, "skipped": 4, "diverged": 0}
    assert last.stat().st_mtime_ns == stamp
    summary = json.loads((last.parent / "summary.json").read_text())
    assert (summary["status"], summary["epochs_done"]) == ("completed", 2)


def test_an_interrupted_run_resumes_as_if_it_had_not_stopped(experiment, tmp_path):
    (run, *_) = plan_runs(experiment, scale="tiny", seeds=(0,), out=tmp_path / "out")

    def stop_in_epoch_two(info):
        if info.epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(run.config, run_dir=run.folder, builders=tiny_builders(), progress=False,
              log=None, callbacks=[stop_in_epoch_two])
    assert run_status(run) == "resumable"
    counts = _sweep(experiment, tmp_path / "out", seeds=(0,))
    assert (counts["resumed"], counts["trained"]) == (1, 1)
    straight = tmp_path / "straight"
    train(run.config, run_dir=straight, builders=tiny_builders(), progress=False, log=None)
    resumed = load_checkpoint(run.folder / "last.pt")["model"]
    for key, value in load_checkpoint(straight / "last.pt")["model"].items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=0, msg=key)


def test_a_folder_without_a_checkpoint_is_trained_again(experiment, tmp_path):
    (run, *_) = plan_runs(experiment, scale="tiny", seeds=(0,), out=tmp_path / "out")
    _sweep(experiment, tmp_path / "out", seeds=(0,))
    for name in ("last.pt", "prev.pt", "best.pt", "summary.json"):
        (run.folder / name).unlink(missing_ok=True)
    assert run_status(run) == "new"
    assert _sweep(experiment, tmp_path / "out", seeds=(0,))["trained"] == 1
    assert run_status(run) == "completed"


def test_a_folder_made_with_another_config_is_an_error_not_overwritten(experiment, tmp_path):
    out = tmp_path / "out"
    _sweep(experiment, out, seeds=(0,), overrides=("train.epochs=1",))
    with pytest.raises(ConfigError, match=r"train\.epochs: 1 in the folder, 2 asked"):
        _sweep(experiment, out, seeds=(0,))
    summary = json.loads((out / "test_table/tiny/tiny-net--bn/seed0/summary.json").read_text())
    assert summary["epochs_done"] == 1


def test_a_diverged_run_is_reported_and_skipped_afterwards(experiment, tmp_path):
    out = tmp_path / "out"
    counts = run_experiment(experiment, out=out, seeds=(0,), progress=False,
                            log=lambda line: None, builders=tiny_builders(poison=(0, 1)))
    assert counts["diverged"] == 2
    assert _sweep(experiment, out, seeds=(0,))["diverged"] == 2
    report = experiment_report(experiment, scale="tiny", out=out, seeds=(0,)).read_text()
    assert "| tiny net | diverged | diverged |" in report
    assert "Diverged (non-finite loss): tiny net / BN seed 0; tiny net / IEBN seed 0." in report


def test_report_lays_out_ours_and_the_papers_numbers(experiment, tmp_path):
    out = tmp_path / "out"
    _sweep(experiment, out, seeds=(0,))
    results = collect_results(experiment, scale="tiny", out=out)
    bn, iebn = results[("tiny net", "BN")].values, results[("tiny net", "IEBN")].values
    summary = json.loads((out / "test_table/tiny/tiny-net--bn/seed0/summary.json").read_text())
    assert bn == [pytest.approx(100.0 - summary["final_acc"])]
    path = experiment_report(experiment, scale="tiny", out=out, seeds=(0, 1))
    text = path.read_text()
    lines = text.splitlines()
    row = next(line for line in lines if line.startswith("| tiny net |"))
    best = min(bn[0], iebn[0])
    assert f"**{best:.1f}**" in row  # error: the lowest of the row is bold
    assert "| tiny net | 5.5 | 4.9 ± 0.1 |" in text  # the paper's table, as printed
    assert "Missing runs (2): tiny net / BN seed 1; tiny net / IEBN seed 1." in text
    assert "Not run at this scale (see the notes): other data / IEBN." in text
    assert ("Evaluated with the norms' moving-average statistics: tiny net / BN; "
            "tiny net / IEBN.") in text  # summary.json's eval_statistics
    assert "compare the ordering of the columns" in text and "Read the columns." in text
    assert (path.parent / "figure.png").read_bytes()[:4] == b"\x89PNG"


def test_report_draws_what_sn_and_bin_learned(experiment, tmp_path):
    import dataclasses

    cells = {("tiny net", "BN"): Cell(experiment.cells[("tiny net", "BN")].config,
                                      ("model.norm=sn",)),
             ("tiny net", "IEBN"): Cell(experiment.cells[("tiny net", "IEBN")].config,
                                        ("model.norm=bin",))}
    adaptive = dataclasses.replace(experiment, cells=cells, paper={})
    out = tmp_path / "out"
    _sweep(adaptive, out, seeds=(0,))
    path = experiment_report(adaptive, scale="tiny", out=out, builders=tiny_builders())
    text = path.read_text()
    assert "**tiny net / BN** (seed 0): SN's mean and variance ratios" in text
    assert "![tiny net / IEBN](learned-tiny-net--iebn.png)" in text
    for name in ("learned-tiny-net--bn.png", "learned-tiny-net--iebn.png"):
        assert (path.parent / name).read_bytes()[:4] == b"\x89PNG"
    assert "## The paper" not in text


def test_report_draws_learning_curves_when_the_paper_shows_them(experiment, tmp_path):
    import dataclasses

    out = tmp_path / "out"
    curves = dataclasses.replace(experiment, curves=True)
    _sweep(curves, out, seeds=(0, 1))
    path = experiment_report(curves, scale="tiny", out=out)
    assert "## Test accuracy per epoch (mean ± std over seeds)" in path.read_text()
    assert (path.parent / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "curves.png" not in experiment_report(experiment, scale="tiny", out=out).read_text()


def test_labels_give_distinct_folder_names():
    from normlab.experiments.registry import label_slug

    assert label_slug("γ̂ = -1") == "gammahat-m1" != label_slug("γ̂ = 1") == "gammahat-1"
    assert label_slug("C+2×M") == "c-plus-2xm"
    assert label_slug("ResNet164 / CIFAR100") == "resnet164-cifar100"
    with pytest.raises(ValueError, match=r"row labels \['a b', 'a-b'\] give the same"):
        Experiment("x", "s", "t", rows=("a b", "a-b"), columns=("c",), cells={})
    with pytest.raises(ValueError, match=r"column labels \['\?'\] give the same or an empty"):
        Experiment("x", "s", "t", rows=("a",), columns=("?",), cells={})


def test_a_folder_filled_after_planning_is_not_trained_over(experiment, tmp_path):
    import shutil

    out = tmp_path / "out"
    cell = out / "test_table/tiny/tiny-net--bn"

    def fill_seed1_with_seed0(line):
        if line.startswith("[2/4]") and "training" in line:
            shutil.copytree(cell / "seed0", cell / "seed1")

    with pytest.raises(ConfigError, match=r"train\.seed: 0 in the folder, 1 asked"):
        run_experiment(experiment, out=out, seeds=(0, 1), progress=False,
                       log=fill_seed1_with_seed0, builders=tiny_builders())
    assert json.loads((cell / "seed1/summary.json").read_text())["status"] == "completed"


def test_a_second_sweep_of_one_folder_is_refused_naming_the_first(experiment, tmp_path):
    from normlab.experiments.sweep import sweep_folder
    from normlab.train import RunDirError
    from normlab.train.run_folder import FolderLock

    out = tmp_path / "out"
    folder = sweep_folder(out, experiment, "tiny")
    folder.mkdir(parents=True)
    with FolderLock(folder, "sweep folder"):
        with pytest.raises(RunDirError, match=rf"^sweep folder {folder} is in use .*pid \d+"):
            _sweep(experiment, out, seeds=(0,))
    assert not list(folder.iterdir()) or [p.name for p in folder.iterdir()] == [".lock"]
    assert _sweep(experiment, out, seeds=(0,))["trained"] == 2


def test_a_sweep_never_deletes_a_checkpoint(experiment, tmp_path):
    from normlab.experiments.sweep import _clear_unfinished
    from normlab.train import RunDirError

    (run, *_) = plan_runs(experiment, scale="tiny", seeds=(0,), out=tmp_path / "out")
    _sweep(experiment, tmp_path / "out", seeds=(0,))
    with pytest.raises(RunDirError, match="never deletes a checkpoint"):
        _clear_unfinished(run.folder)
    assert run_status(run) == "completed"
