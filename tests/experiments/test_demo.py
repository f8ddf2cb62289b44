"""The demo trains every cell once, resumes, and builds its report from its own cells.

The tests run at test scale (one epoch of three large batches per cell, 8×8 images, a
narrow net: seconds); the ``--quick`` demo itself runs in the ``slow`` test.
"""

import json
import re

import pytest

from normlab.cli import main
from normlab.experiments import demo
from normlab.experiments.demo import SETTINGS, DemoSettings, accuracy_cells, run_demo
from normlab.report import demo as demo_report
from normlab.report.demo import build_report
from normlab.train import NonFiniteLossError
from tests.norms.tables import batch_pooling_norms

TINY = DemoSettings(norms=("bn", "bin", "iebn", "sn"), seeds=1, epochs=1, batch_size=512,
                    image_size=8, widths=(4, 8, 8))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    report = build_report(run_demo(TINY, out, progress=False), TINY)
    return out, report


def test_every_cell_is_written_once(finished):
    out, _ = finished
    names = sorted(p.name for p in (out / "cells").glob("*.json"))
    expected = sorted(
        f"{s}-{n}-seed0.json" for s in ("clean", "small_batch", "noise") for n in TINY.norms
    )
    assert names == expected
    clean = json.loads((out / "cells" / "clean-bin-seed0.json").read_text())
    assert 0 <= clean["test_acc"] <= 100 and clean["unseen_styles_acc"] is not None
    assert any("gate_values" in layer for layer in clean["norm_summary"])
    noise = json.loads((out / "cells" / "noise-bn-seed0.json").read_text())
    assert noise["unseen_styles_acc"] is None and noise["norm_summary"] == []


def test_report_numbers_are_the_cells_numbers(finished):
    out, report = finished
    text = report.read_text()
    cells = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    table = accuracy_cells(cells)
    rows = {
        line.split("|")[1].strip(): [c.strip().strip("*") for c in line.split("|")[2:-1]]
        for line in text.splitlines()
        if re.match(r"\| (bn|bin|iebn|sn) \|", line)
    }
    assert set(rows) == set(TINY.norms)
    for norm, entries in rows.items():
        for setting, entry in zip(SETTINGS, entries):
            assert entry == f"{table[setting][norm][0]:.1f}", (norm, setting)
    assert "1 epochs" in text and "1 seed(s)" in text
    for figure in ("accuracy.png", "sn_ratios.png", "bin_gates.png", "iebn_gates.png"):
        assert (out / figure).stat().st_size > 1000
        assert f"({figure})" in text


def test_rerun_skips_finished_cells_and_refuses_other_settings(finished, monkeypatch):
    out, report = finished

    def fail(*args, **kwargs):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr(demo, "train_cell", fail)
    before = report.read_text()
    assert build_report(run_demo(TINY, out, progress=False), TINY).read_text() == before
    with pytest.raises(ValueError, match="other settings"):
        run_demo(DemoSettings(norms=("bn",), seeds=1, epochs=2), out, progress=False)


def test_a_crashed_run_resumes_with_the_missing_cells(tmp_path, monkeypatch):
    settings = DemoSettings(norms=("bn", "gn"), seeds=1, epochs=1, batch_size=512,
                            image_size=8, widths=(4, 4, 4))
    real = demo.train_cell
    calls = []

    def crash_on_third(*args, **kwargs):
        calls.append(args[1:4])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(demo, "train_cell", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_demo(settings, tmp_path, progress=False)
    assert len(list((tmp_path / "cells").glob("*.json"))) == 2
    calls.clear()
    monkeypatch.setattr(demo, "train_cell", lambda *a, **k: calls.append(a[1:4]) or real(*a, **k))
    run_demo(settings, tmp_path, progress=False)
    assert len(calls) == 4 and ("clean", "bn", 0) not in calls
    assert len(list((tmp_path / "cells").glob("*.json"))) == 6


def test_cli_quick_flags(monkeypatch, tmp_path, capsys):
    seen = {}

    def fake_run(settings, out, progress):
        seen.update(settings=settings, out=out, progress=progress)
        return tmp_path

    def fake_report(out, settings):
        report = out / "report.md"
        report.write_text("Test accuracy (%)\n\n| table |\n\nSettings:\n")
        return report

    monkeypatch.setattr(demo_report, "run_demo", fake_run)
    monkeypatch.setattr(demo_report, "build_report", fake_report)
    assert main(["demo", "--quick", "--out", str(tmp_path), "--norms", "bn", "sn",
                 "--quiet"]) == 0
    assert seen["settings"] == DemoSettings.quick(norms=("bn", "sn"))
    assert seen["progress"] is False
    assert "| table |" in capsys.readouterr().out


def test_a_diverging_cell_stops_with_the_engines_error_and_writes_nothing(tmp_path):
    settings = DemoSettings(norms=("bn",), seeds=1, epochs=1, batch_size=512, image_size=8,
                            widths=(4, 4, 4), lr=1e30)
    with pytest.raises(NonFiniteLossError, match="after epoch 1|at epoch 1"):
        run_demo(settings, tmp_path, progress=False)
    assert not list((tmp_path / "cells").glob("*.json"))


@pytest.mark.slow
def test_the_quick_demo_end_to_end(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path), "--quiet"]) == 0
    quick = DemoSettings.quick()
    cells = list((tmp_path / "cells").glob("*.json"))
    assert len(cells) == len(quick.norms) * 3 * quick.seeds
    assert "Test accuracy (%)" in capsys.readouterr().out
    table = accuracy_cells([json.loads(p.read_text()) for p in cells])
    assert all(len(table[s]) == len(quick.norms) for s in SETTINGS)
    assert max(table["clean"]["bn"]) > 50  # far above chance (10 %): the short preset learns
    for norm in set(quick.norms) - set(batch_pooling_norms()):  # virtual batches: no effect
        assert table["small_batch"][norm] == table["clean"][norm]
    assert table["small_batch"]["bn"][0] < table["clean"]["bn"][0]
