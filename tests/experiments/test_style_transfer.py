"""``normlab style``: one network per norm, finished norms skipped, settings pinned, report."""

from __future__ import annotations

import json

import pytest
import torch

from normlab.cli import main
from normlab.experiments.style_transfer import StyleSettings, run_style_transfer
from normlab.report.style import style_report

TINY = StyleSettings(size=16, batch_size=2, steps=3, content=("coffee",))


def test_runs_each_norm_once_reports_and_refuses_other_settings(tmp_path, capsys):
    """One sweep of two norms proves the report, the skipping of finished norms, and the
    refusal of a second sweep with other settings or unknown norms into the same folder."""
    lines = []
    out = run_style_transfer(TINY, ("in", "bin"), tmp_path, progress=False, log=lines.append)
    assert out == tmp_path
    path = style_report(out, TINY)
    assert lines[1].startswith("[1/2] in: content ")
    history = json.loads((tmp_path / "norms/bin.json").read_text())["history"]
    assert [r["step"] for r in history] == [1, 2, 3]
    text = path.read_text()
    assert "| in |" in text and "| bin |" in text and "seeded random weights" in text
    for name in ("losses.png", "images.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    stamp = (tmp_path / "norms/in.json").stat().st_mtime_ns
    lines.clear()
    run_style_transfer(TINY, ("in", "bin"), tmp_path, progress=False, log=lines.append)
    assert lines == ["[1/2] in: done, skipped", "[2/2] bin: done, skipped"]
    assert (tmp_path / "norms/in.json").stat().st_mtime_ns == stamp
    other = StyleSettings(size=16, batch_size=2, steps=4, content=("coffee",))
    with pytest.raises(ValueError, match=r"other settings \(steps\)"):
        run_style_transfer(other, ("in",), tmp_path, progress=False, log=lambda line: None)
    with pytest.raises(ValueError, match="unknown norms"):
        run_style_transfer(TINY, ("xn",), tmp_path, progress=False)
    with pytest.raises(SystemExit):
        main(["style", "--size", "18"])
    assert "--size must be a multiple of 4" in capsys.readouterr().err


class _RunsCode:
    def __reduce__(self):
        return (print, ("this pickle runs code",))


def test_a_diverging_loss_and_refused_vgg_weights_are_one_line_errors(tmp_path, capsys):
    args = ["style", "--steps", "2", "--size", "16", "--batch-size", "2", "--content", "coffee",
            "--norms", "in", "-q"]
    assert main([*args, "--out", str(tmp_path / "nan"), "--style-weight", "1e300"]) == 1
    err = capsys.readouterr().err
    assert "training loss became inf at epoch 1, step 1/2" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "nan" / "norms" / "in.json").exists()
    torch.save({"features.0.weight": _RunsCode()}, tmp_path / "evil.pth")
    assert main([*args, "--out", str(tmp_path / "evil"), "--vgg-weights",
                 str(tmp_path / "evil.pth")]) == 1
    err = capsys.readouterr().err
    assert f"--vgg-weights {tmp_path / 'evil.pth'}: cannot be used" in err
    assert len(err.splitlines()) == 1 and "this pickle runs code" not in capsys.readouterr().out
