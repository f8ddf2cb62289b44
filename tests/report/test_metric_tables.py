"""Tables whose columns are metrics of one run per row (the SN paper's detection tables),
and the figure of SN's ratios per component over the epochs, from hand-written run folders."""

from __future__ import annotations

import json
import math

import pytest

from normlab.experiments import Cell, Experiment
from normlab.experiments.registry import RUN, label_slug
from normlab.experiments.sweep import cell_folder, plan_runs
from normlab.report import collect_results, experiment_report
from normlab.report.figures import ratio_dynamics_figure
from normlab.train import Config, save_config

METRICS = {"AP": "final_box_ap", "AP.5": "final_box_ap50", "APs": "final_box_aps"}


def _experiment(**kw):
    rows = ("BN† / –", "BN† / SN", "SN‡ / SN")
    kw.setdefault("cells", {
        ("BN† / –", RUN): Cell("recipe", ("model.norm=bn",)),
        ("BN† / SN", RUN): Cell("recipe", ("model.norm=sn",)),
        ("SN‡ / SN", RUN): Cell("recipe", ("model.norm=sn",), tiny=False),
    })
    kw.setdefault("paper", {("BN† / –", "AP"): "36.7", ("BN† / SN", "AP.5"): "59.4"})
    return Experiment(name="det_table", source="SN paper, Table V", title="AP per head",
                      rows=rows, columns=tuple(METRICS), metric="accuracy",
                      best_within="column", metrics=METRICS, unit="COCO box AP (%)", **kw)


def _ratios(bn: float) -> dict[str, dict[str, list[float]]]:
    rest = (1.0 - bn) / 2
    return {"backbone": {"mean": [rest, rest, bn], "var": [rest, rest, bn]},
            "box_head": {"mean": [0.2, 0.5, 0.3], "var": [0.1, 0.6, 0.3]}}


def _fake_run(folder, summary, rows=()):
    folder.mkdir(parents=True)
    save_config(Config(), folder / "config.yaml")
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_metric_columns_need_one_run_per_row_under_run():
    with pytest.raises(ValueError, match="must be the metrics' labels"):
        _experiment().__class__(name="x", source="s", title="t", rows=("a",),
                                columns=("AP.5", "AP"), cells={},
                                metrics={"AP": "final_box_ap", "AP.5": "final_box_ap50"})
    with pytest.raises(ValueError, match=r"cell \('BN† / –', 'AP'\) is not in the rows"):
        _experiment(cells={("BN† / –", "AP"): Cell("recipe")})
    experiment = _experiment()
    assert experiment.run_columns == (RUN,)
    assert experiment.cell_label(("BN† / –", RUN)) == "BN† / –"  # the row names its run
    assert [cell for cell, _, _ in experiment.runs("full")] == [
        ("BN† / –", RUN), ("BN† / SN", RUN), ("SN‡ / SN", RUN)]
    assert [cell for cell, _, _ in experiment.runs("tiny")] == [("BN† / –", RUN),
                                                                 ("BN† / SN", RUN)]


def test_the_papers_marks_give_distinct_folder_names():
    assert label_slug("BN† / BN†") == "bn-frozen-bn-frozen"
    assert label_slug("BN‡ / BN") == "bn-scratch-bn"
    assert label_slug("BN / BN") == "bn-bn"
    assert label_slug("BN† / –") == "bn-frozen"


def test_report_shows_each_metric_of_the_rows_run_beside_the_paper(tmp_path):
    experiment = _experiment()
    out = tmp_path / "out"
    base = cell_folder(out, experiment, "full", ("BN† / –", RUN))
    assert base.name == "bn-frozen--run"
    _fake_run(base / "seed0", {"status": "completed", "final_box_ap": 30.0,
                               "final_box_ap50": 50.0, "final_box_aps": math.nan})
    _fake_run(base / "seed1", {"status": "completed", "final_box_ap": 32.0,
                               "final_box_ap50": 54.0, "final_box_aps": 10.0})
    sn = cell_folder(out, experiment, "full", ("BN† / SN", RUN))
    _fake_run(sn / "seed0", {"status": "completed", "final_box_ap": 33.5,
                             "final_box_ap50": 51.0, "final_box_aps": 9.0},
              [{"epoch": 1, "box_ap": 20.0, "sn_ratios": _ratios(0.4)},
               {"epoch": 2, "box_ap": 33.5, "sn_ratios": _ratios(0.6)}])
    _fake_run(cell_folder(out, experiment, "full", ("SN‡ / SN", RUN)) / "seed0",
              {"status": "stopped_nonfinite_loss"})

    results = collect_results(experiment, scale="full", out=out)
    first = results[("BN† / –", RUN)]
    assert first.seeds == [0, 1] and first.values == [30.0, 32.0]
    assert first.metrics == {"AP": [30.0, 32.0], "AP.5": [50.0, 54.0], "APs": [10.0]}
    assert results[("SN‡ / SN", RUN)].diverged == [0]

    path = experiment_report(experiment, scale="full", out=out, seeds=(0, 1))
    text = path.read_text()
    assert "## normlab: COCO box AP (%), mean ± std over seeds" in text
    assert "|  | AP | AP.5 | APs |" in text
    assert "| BN† / – | 31.0 ± 1.0 | **52.0 ± 2.0** | **10.0** |" in text
    assert "| BN† / SN | **33.5** | 51.0 | 9.0 |" in text
    assert "| SN‡ / SN | diverged | diverged | diverged |" in text
    assert "Missing runs (2): BN† / SN seed 1; SN‡ / SN seed 1." in text
    assert "Diverged (non-finite loss): SN‡ / SN seed 0." in text
    assert "| BN† / – | 36.7 | – | – |" in text  # the paper's table, as printed
    assert "## SN ratios per component over training" in text
    assert "![BN† / SN](ratios-bn-frozen-sn--run.png)" in text
    assert "ratios-bn-frozen--run.png" not in text  # no SN layer, no ratios recorded
    for name in ("figure.png", "ratios-bn-frozen-sn--run.png"):
        assert (path.parent / name).read_bytes()[:4] == b"\x89PNG"


def test_report_draws_the_first_metrics_curve(tmp_path):
    experiment = _experiment(curves=True)
    out = tmp_path / "out"
    for row, aps in (("BN† / –", (5.0, 9.0)), ("BN† / SN", (6.0, 12.0))):
        _fake_run(cell_folder(out, experiment, "tiny", (row, RUN)) / "seed0",
                  {"status": "completed", "final_box_ap": aps[-1]},
                  [{"epoch": e, "box_ap": ap} for e, ap in enumerate(aps, start=1)])
    text = experiment_report(experiment, scale="tiny", out=out).read_text()
    assert "## AP per epoch (mean ± std over seeds)" in text
    assert (out / "det_table/tiny/curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "| BN† / SN | **12.0** | – | – |" in text


def test_ratio_figure_takes_components_that_appear_later(tmp_path):
    records = [{"backbone": _ratios(0.3)["backbone"]}, _ratios(0.5), {}]
    path = ratio_dynamics_figure(records, tmp_path / "r.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_plan_names_one_folder_per_row(tmp_path):
    experiment = _experiment(cells={("BN† / SN", RUN): Cell("sn_imagenet_resnet50_step_tiny")},
                             paper={})
    (run,) = plan_runs(experiment, scale="full", seeds=(0,), out=tmp_path)
    assert run.cell == ("BN† / SN", RUN)
    assert run.folder == tmp_path / "det_table/full/bn-frozen-sn--run/seed0"
