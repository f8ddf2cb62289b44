"""The ``normlab`` command line: overrides, errors, listings, demo, and a real tiny run."""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import subprocess
import sys

import pytest
import torch
import yaml

import normlab.cli
from normlab.bench import cli as bench_cli
from normlab.cli import EXIT_STATUS, build_parser, main
from normlab.errors import CheckpointError, ConfigError, NonFiniteLossError, UsageError
from normlab.report import demo, style
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


@pytest.mark.parametrize("what", ["norms", "models", "datasets", "transforms", "configs"])
def test_list(what, capsys):
    assert main(["list", what]) == 0
    out = capsys.readouterr().out
    expected = {"norms": "iebn", "models": "resnet164", "datasets": "digits",
                "transforms": "imagenet_train_lighting"}
    assert expected.get(what, "iebn_cifar_resnet164_tiny") in out


def test_demo_style_and_bench_get_their_arguments_from_the_one_tree(monkeypatch):
    calls = []
    for module in (demo, style, bench_cli):
        monkeypatch.setattr(module, "run", lambda args: calls.append(args) or 0)
    assert main(["demo", "--quick", "--out", "x"]) == 0
    assert main(["bench", "layers", "--repeats", "2"]) == 0
    assert main(["style", "--steps", "3", "--norms", "bn", "in"]) == 0
    demo_args, bench_args, style_args = calls
    assert (demo_args.command, demo_args.quick, demo_args.out) == ("demo", True, "x")
    assert (bench_args.command, bench_args.what, bench_args.repeats) == ("bench", "layers", 2)
    assert (style_args.steps, style_args.norms) == (3, ["bn", "in"])


def test_bench_usage_errors_exit_with_status_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "layers", "--shapes", "1,2,3"])
    assert exc.value.code == 2
    assert "needs 4 sizes" in capsys.readouterr().err


def test_every_tiny_config_builds_and_runs_a_batch(sample_folder):
    for name in (n for n in list_configs() if n.endswith("_tiny")):
        cfg = load_config(name, ["train.device=cpu"])
        if cfg.task == "detection":  # tests/experiments/test_detection_recipes.py runs them
            continue
        if cfg.data.loader == "stream":  # the tiny ImageNet recipes stream a sample folder
            cfg = load_config(name, ["train.device=cpu", f"data.root={sample_folder}",
                                     "data.workers=0", "data.batch_size=16"])
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
    assert re.search(r"^iebn_table2_constant_noise +IEBN paper, Table 2", capsys.readouterr().out,
                     re.MULTILINE)
    # 2 batches an epoch: what is asserted (lines, counts, skips, report) is per run
    argv = ["experiment", "run", "bin_table1_cifar", "--seeds", "1", "--out", str(tmp_path),
            "-q", "--set", "train.epochs=1", "train.limit_batches=2", "data.kwargs.size=8",
            "model.kwargs.widths=[4,4,4]", "model.kwargs.stem_width=4"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "[2/2] BIN / CIFAR-10, seed 0: final acc" in out
    assert "2 trained, 0 resumed, 0 skipped, 0 diverged" in out
    table = out.split("2 trained, 0 resumed, 0 skipped, 0 diverged\n")[1]
    assert table.startswith("## normlab: top-1 accuracy (%)")  # the report's table, printed
    assert re.search(r"^\| BIN \| \**[0-9.]+", table, re.MULTILINE)
    assert "Seeds finished per cell: 1." in table and "## The paper" not in table
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
    assert main(argv) == 2  # checked before anything trains
    assert "root '" + str(tmp_path / "no-cifar") + "', which does not exist" in (
        capsys.readouterr().err)
    assert not list(tmp_path.rglob("*.pt"))


# -- one validated config, one error table ---------------------------------------------------

TINY = {
    "model": {"name": "resnet20", "norm": "bn", "kwargs": {"widths": [4, 4, 4], "stem_width": 4}},
    "data": {"name": "synthetic", "batch_size": 32, "augment": False,
             "kwargs": {"size": 8, "num_classes": 4, "train_size": 64, "test_size": 32}},
    "train": {"epochs": 1, "device": "cpu"},
    "run": {"name": "r", "progress": False},
}


@pytest.fixture
def tiny(tmp_path):
    raw = {**TINY, "run": {**TINY["run"], "out_dir": str(tmp_path / "runs")}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def one_line_error(capsys, command: str = "train") -> str:
    """The single stderr line of a failed command (no traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"normlab {command}: error: "), err
    return lines[0]


@pytest.mark.parametrize(("item", "needles"), [
    ("train.amp=fp8", ["train.amp", "'none' or 'bf16'", "'fp8'"]),
    ("model.norm=ienb", ["model.norm", "did you mean 'iebn'"]),
    ("optim.lr=-1", ["optim.lr must be > 0", "-1"]),
    ("optim.lrr=0.1", ["unknown config key 'optim.lrr'", "Did you mean 'lr'"]),
    ("data.eval_batch_size=0", ["data.eval_batch_size must be >= 1 or null"]),
    ("train.label_smoothing=5", ["train.label_smoothing must be in [0, 1)"]),
    ("model.kwargs.drop_rate=0.5", ["model 'resnet20' takes no option 'drop_rate'",
                                    "Valid options:", "se_reduction"]),
    ("data.kwargs.colour=1", ["data set 'synthetic' takes no option 'colour'", "num_classes"]),
    ("model.kwargs.norm_kwargs.operater=fc", ["norm 'bn' has no option 'operater'"]),
])
def test_bad_values_exit_2_with_one_line_naming_the_valid_choices(tiny, capsys, item, needles):
    assert main(["train", "-c", str(tiny), "--set", item, "--print-config"]) == 2
    line = one_line_error(capsys)
    for needle in needles:
        assert needle in line, line


@pytest.mark.parametrize("item", ["train.epochs=0", "train.epochs=-1"])
def test_no_epochs_exits_2_before_any_folder_exists(tiny, tmp_path, capsys, item):
    assert main(["train", "-c", str(tiny), "-q", "--set", item]) == 2
    assert "train.epochs must be >= 1" in one_line_error(capsys)
    assert not (tmp_path / "runs").exists()


def test_debug_shows_the_traceback(tiny, capsys):
    with pytest.raises(ConfigError, match="train.amp"):
        main(["--debug", "train", "-c", str(tiny), "--set", "train.amp=fp8", "--print-config"])


def test_read_only_output_folder_is_one_line_exit_1(tiny, tmp_path, capsys, monkeypatch):
    real_mkdir = os.mkdir

    def read_only(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path / "runs")):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", read_only)
    assert main(["train", "-c", str(tiny), "-q"]) == 1
    line = one_line_error(capsys)
    assert f"cannot write {tmp_path / 'runs'}" in line and "Read-only file system" in line


def test_full_disk_is_one_line_exit_1(tiny, tmp_path, capsys, monkeypatch):
    target = tmp_path / "runs" / "r" / "last.pt"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    monkeypatch.setattr(normlab.cli, "train", full)
    assert main(["train", "-c", str(tiny), "-q"]) == 1
    line = one_line_error(capsys)
    assert line == f"normlab train: error: cannot write {target}: No space left on device"


@pytest.mark.parametrize(("error", "status"), [
    (UsageError("give a config"), 2),
    (ConfigError("bad value"), 2),
    (CheckpointError("corrupt"), 1),
    (NonFiniteLossError("loss is nan", epoch=0, step=1, value=float("nan")), 1),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "x.yaml"), 1),
    (ImportError("the detection models need torchvision; install it with `pip install "
                 "normlab[vision]`"), 1),
])
def test_every_error_class_maps_to_its_exit_status(tiny, capsys, monkeypatch, error, status):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(normlab.cli, "train", fail)
    assert main(["train", "-c", str(tiny), "-q"]) == status
    assert str(error.args[-1] if isinstance(error, OSError) else error) in one_line_error(capsys)
    assert dict(EXIT_STATUS)[KeyboardInterrupt] == 130


def test_ctrl_c_exits_130(tiny, capsys, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(normlab.cli, "train", interrupt)
    assert main(["train", "-c", str(tiny), "-q"]) == 130
    assert capsys.readouterr().err.strip() == "normlab train: interrupted"


def test_an_unexpected_error_is_a_bug_and_keeps_its_traceback(tiny, monkeypatch):
    monkeypatch.setattr(normlab.cli, "train", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        main(["train", "-c", str(tiny), "-q"])


# -- one command line ----------------------------------------------------------------------


def _commands(parser, prefix=()):
    """Every leaf command of the tree with its parser, e.g. ``("bench", "layers")``."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [(prefix, parser)]
    return [leaf for name, child in subs[0].choices.items()
            for leaf in _commands(child, (*prefix, name))]


def test_top_level_help_lists_every_command_and_its_options(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    leaves = _commands(build_parser())
    assert {path[0] for path, _ in leaves} >= {"train", "eval", "list", "experiment", "demo",
                                               "style", "bench"}
    for path, parser in leaves:
        assert f"normlab {' '.join(path)} [-h]" in out, path
        for action in parser._actions:
            if action.option_strings:
                assert any(f"[{flag}" in out for flag in action.option_strings), (path, action)


@pytest.mark.parametrize("argv", [["train"], ["eval"], ["experiment"], ["demo"], ["style"],
                                  ["bench"], ["bench", "layers"], ["bench", "inference"]])
def test_every_command_help_comes_from_the_tree_with_examples(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: normlab {' '.join(argv)} ")
    assert f"normlab {argv[0]}" in out.split("example")[1]


def test_style_size_is_checked_by_the_tree(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["style", "--size", "18"])
    assert exc.value.code == 2
    assert "--size must be a multiple of 4, got 18" in capsys.readouterr().err


def test_bench_cuda_without_a_device_is_a_usage_error(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", "layers", "--device", "cuda"]) == 2
    assert "no CUDA device" in one_line_error(capsys, "bench")
