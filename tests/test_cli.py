"""The ``normlab`` command line: overrides, errors, listings, demo, and a real tiny run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from normlab.cli import main
from normlab.train import build_setup, list_configs, load_config

from .train.tiny import one_thread

__all__ = ["one_thread"]


def test_print_config_applies_overrides(capsys):
    code = main(
        [
            "train",
            "-c",
            "iebn_cifar_resnet164",
            "--set",
            "optim.lr=0.05",
            "model.norm=bn",
            "--set",
            "schedule.milestones=[2,3]",
            "--print-config",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "lr: 0.05" in out and "norm: bn" in out and "milestones: [2, 3]" in out


def test_unknown_key_is_rejected_with_valid_keys(capsys):
    code = main(["train", "-c", "iebn_cifar_resnet164_tiny", "--set", "optim.lrr=0.1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown config key 'optim.lrr'" in err and "Did you mean 'lr'" in err
    assert "weight_decay" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train"], "give a config"),
        (["train", "-c", "no_such_recipe"], "neither a file nor a shipped config"),
        (["train", "-c", "x", "--resume", "y"], "drop -c"),
        (["train", "-c", "iebn_cifar_resnet164", "--set", "lr"], "section.key=value"),
    ],
)
def test_usage_errors_exit_2(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_missing_run_and_data_exit_1(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path)]) == 1
    assert "no checkpoint" in capsys.readouterr().err
    argv = ["train", "-c", "iebn_cifar_resnet164", f"--set=run.out_dir={tmp_path}", "-q"]
    argv += [f"--set=data.root={tmp_path / 'missing'}"]
    assert main(argv) == 1
    assert "missing" in capsys.readouterr().err


@pytest.mark.parametrize("what", ["norms", "models", "datasets", "configs"])
def test_list(what, capsys):
    assert main(["list", what]) == 0
    out = capsys.readouterr().out
    expected = {"norms": "iebn", "models": "resnet164", "datasets": "digits"}
    assert expected.get(what, "iebn_cifar_resnet164_tiny") in out


def test_demo_and_bench_pass_their_arguments_through(monkeypatch):
    import normlab.bench.cli
    import normlab.experiments.demo

    calls = []
    monkeypatch.setattr(normlab.experiments.demo, "main", lambda argv: calls.append(("demo", argv)))
    monkeypatch.setattr(normlab.bench.cli, "main", lambda argv: calls.append(("bench", argv)))
    assert main(["demo", "--quick", "--out", "x"]) == 0
    assert main(["bench", "layers", "--repeats", "2"]) == 0
    assert calls == [("demo", ["--quick", "--out", "x"]), ("bench", ["layers", "--repeats", "2"])]


def test_bench_usage_errors_exit_with_status_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "layers", "--shapes", "1,2,3"])
    assert exc.value.code == 2
    assert "needs 4 sizes" in capsys.readouterr().err


def test_every_tiny_config_builds_and_runs_a_batch():
    for name in (n for n in list_configs() if n.endswith("_tiny")):
        cfg = load_config(name, ["train.device=cpu"])
        _, loaders, model = build_setup(cfg)
        x, y = next(iter(loaders.train))
        assert model(x[:4]).shape == (4, loaders.num_classes), name


def test_train_tiny_config_end_to_end_then_eval(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "-c", "iebn_cifar_resnet164_tiny", "-q"]
    argv += ["--set", f"run.out_dir={tmp_path}", "run.name=run", "train.epochs=3"]
    argv += ["schedule.milestones=[2]"]
    assert main(argv) == 0
    assert "final acc" in capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["final_acc"] > 50
    assert load_config(run / "config.yaml").train.epochs == 3
    assert main(["train", "--resume", str(run), "--set", "train.epochs=4", "-q"]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 4
    assert main(["eval", str(run), "--recompute-stats", "5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["epoch"] == 4 and result["num_batches"] == 5
    assert (
        abs(result["test_acc"] - json.loads((run / "summary.json").read_text())["final_acc"]) < 1e-9
    )
    assert result["recomputed"]["test_acc"] > 50
    state = torch.load(run / "best.pt", weights_only=True)
    assert state["format"] == "normlab-checkpoint"


def test_python_dash_m_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "normlab", "list", "norms"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "bin" in out.stdout.split()


def test_experiment_list_run_skip_and_report(tmp_path, capsys):
    assert main(["experiment", "list"]) == 0
    assert "iebn_table2_constant_noise  IEBN paper, Table 2" in capsys.readouterr().out
    argv = ["experiment", "run", "bin_table1_cifar", "--seeds", "1", "--out", str(tmp_path),
            "-q", "--set", "train.epochs=1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "[2/2] BIN / CIFAR-10, seed 0: final acc" in out
    assert "2 trained, 0 resumed, 0 skipped, 0 diverged" in out
    assert main(argv) == 0
    assert "0 trained, 0 resumed, 2 skipped, 0 diverged" in capsys.readouterr().out
    assert main(["experiment", "report", "bin_table1_cifar", "--seeds", "2", "--out",
                 str(tmp_path)]) == 0
    report = (tmp_path / "bin_table1_cifar/tiny/report.md").read_text()
    assert "Missing runs (2): BN / CIFAR-10 seed 1; BIN / CIFAR-10 seed 1." in report


def test_experiment_errors(tmp_path, capsys):
    assert main(["experiment", "run", "nope"]) == 2
    assert "unknown experiment 'nope'" in capsys.readouterr().err
    argv = ["experiment", "run", "bin_table1_cifar", "--scale", "full", "--seeds", "1",
            "--out", str(tmp_path), "-q", "--set", f"data.root={tmp_path / 'no-cifar'}"]
    assert main(argv) == 1
    assert "no-cifar" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.pt"))
