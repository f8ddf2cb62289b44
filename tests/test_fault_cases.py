"""The 23 fault cases of issue 13 that lost data, were silently wrong or ended in a traceback.

Each test is one case, tried as a user would: through ``normlab.cli.main`` (or the
``normlab`` command in a subprocess where two processes or a kill are needed), on a tiny
config. A case passes when the command ends with a one-line error (exit status not 0, no
traceback) or a correct result, and nothing is lost (the run folder stays consistent and
resumable).
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import normlab.cli
from normlab.cli import main
from normlab.train import build_setup, load_config

from .train.tiny import one_thread

__all__ = ["one_thread"]

SRC = Path(normlab.cli.__file__).resolve().parents[1]

TINY = {
    "model": {"name": "resnet20", "norm": "bn", "kwargs": {"widths": [4, 4, 4], "stem_width": 4}},
    "data": {
        "name": "synthetic",
        "batch_size": 32,
        "augment": False,
        "kwargs": {"size": 8, "num_classes": 4, "train_size": 64, "test_size": 32},
    },
    "optim": {"lr": 0.1},
    "schedule": {"name": "multistep", "milestones": [10]},
    "train": {"epochs": 1, "device": "cpu", "seed": 0},
    "run": {"name": "r", "progress": False},
}
SWEEP = ["experiment", "run", "bin_table1_cifar", "--seeds", "1", "-q", "--set",
         "data.kwargs.size=8", "model.kwargs.widths=[4,4,4]", "model.kwargs.stem_width=4"]


class Unsafe:
    """A class no weights-only loader may construct (stands for a malicious pickle)."""


# -- helpers -------------------------------------------------------------------------------


def _config(tmp_path: Path, **sections) -> Path:
    raw = json.loads(json.dumps(TINY))
    raw["run"]["out_dir"] = str(tmp_path / "runs")
    for key, value in sections.items():
        raw[key] = {**raw[key], **value}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code: int, err: str, *needles: str) -> str:
    """The command failed with one line on stderr, no traceback, naming ``needles``."""
    assert code != 0, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _train(capsys, config: Path, *sets: str) -> tuple[int, str, str]:
    return _run(capsys, "train", "-c", config, "-q", *(["--set", *sets] if sets else []))


def _resume(capsys, folder: Path, *sets: str) -> tuple[int, str, str]:
    return _run(capsys, "train", "--resume", folder, "-q", *(["--set", *sets] if sets else []))


def _rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _ckpt(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def _finite(state: dict) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


def _assert_consistent(folder: Path, epochs: int) -> None:
    """metrics rows 1..epochs, last.pt at epochs, summary and best.pt agreeing, no *.tmp."""
    last = _ckpt(folder / "last.pt")
    summary = json.loads((folder / "summary.json").read_text())
    rows = _rows(folder)
    assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))
    assert last["epoch"] == summary["epochs_done"] == epochs
    best = max(rows, key=lambda r: r["test_acc"])
    assert summary["best_acc"] == best["test_acc"]
    assert _ckpt(folder / "best.pt")["epoch"] == summary["best_epoch"]
    assert summary["best_epoch"] in [r["epoch"] for r in rows if r["test_acc"] == best["test_acc"]]
    assert not list(folder.glob("*.tmp"))


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}


_GATED = """
import os, sys, time
from normlab.cli import main
from normlab.train import build_setup, load_config
print("ready", flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.01)
sys.exit(main(sys.argv[2:]))
"""


def _gated_pair(
    tmp_path: Path, capsys, argv_a: list[str], argv_b: list[str]
) -> list[tuple[int, str]]:
    """Run ``normlab argv_a`` in a subprocess and ``normlab argv_b`` in this process,
    starting at the same instant: the subprocess waits, already imported, for a gate file
    that this process creates just before it runs ``argv_b``."""
    gate = tmp_path / "go"
    proc = subprocess.Popen(
        [sys.executable, "-c", _GATED, str(gate), *map(str, argv_a)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        capsys.readouterr()
        gate.touch()
        code, _, err = _run(capsys, *argv_b)
        return [(proc.wait(timeout=300), proc.communicate()[1]), (code, err)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _image_folder(root: Path, splits: dict[str, list[str]], per_class: int = 8) -> None:
    """Solid-colour 8x8 PNGs, one colour per class (a model learns them in one epoch)."""
    from PIL import Image  # optional: Pillow is needed for image folders

    colours = {"a": (255, 0, 0), "b": (0, 255, 0), "c": (0, 0, 255), "d": (255, 255, 0)}
    for split, classes in splits.items():
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (8, 8), colours[name]).save(folder / f"{i}.png")


# -- data loss (4) -------------------------------------------------------------------------


def test_two_train_runs_with_one_name_never_share_a_folder(tmp_path, capsys):
    config = _config(tmp_path)
    argv = ["train", "-c", str(config), "-q", "--set", "train.epochs=2"]
    results = _gated_pair(
        tmp_path, capsys, [*argv, "train.seed=1"], [*argv, "train.seed=2"]
    )
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0 and codes[1] != 0, results
    failed = next(err for code, err in results if code != 0)
    _one_line_error(1, failed, str(tmp_path / "runs" / "r"))
    folder = tmp_path / "runs" / "r"
    _assert_consistent(folder, 2)
    seed = yaml.safe_load((folder / "config.yaml").read_text())["train"]["seed"]
    assert _ckpt(folder / "last.pt")["config"]["train"]["seed"] == seed


def test_two_train_runs_with_default_names_in_one_second(tmp_path, capsys, monkeypatch):
    config = _config(tmp_path, run={"name": None})
    monkeypatch.setattr(time, "strftime", lambda *args: "20260101-000000")
    assert _train(capsys, config)[0] == 0
    assert _train(capsys, config)[0] == 0
    folders = sorted((tmp_path / "runs").iterdir())
    assert len(folders) == 2, folders
    for folder in folders:
        _assert_consistent(folder, 1)


# `normlab ARGV` that waits, after each epoch it records, for the gate file sys.argv[1]
_HELD_AFTER_EACH_EPOCH = """
import os, sys, time
from normlab.train.run_folder import RunFolder
commit = RunFolder.commit_epoch

def commit_then_wait(self, *args, **kwargs):
    commit(self, *args, **kwargs)
    while not os.path.exists(sys.argv[1]):
        time.sleep(0.01)

RunFolder.commit_epoch = commit_then_wait
from normlab.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_two_sweeps_with_one_out_do_not_delete_each_others_cells(tmp_path, capsys):
    """The first sweep (a subprocess) holds after its first epoch until the second sweep
    (this process) has been refused, so the two always overlap; 2 batches per epoch, as
    the lock and the cells' consistency do not depend on the epoch's length."""
    out, gate = tmp_path / "sweep", tmp_path / "go"
    argv = [*SWEEP, "train.epochs=3", "train.limit_batches=2", "--out", str(out)]
    first = subprocess.Popen(
        [sys.executable, "-c", _HELD_AFTER_EACH_EPOCH, str(gate), *argv],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )
    try:
        deadline = time.monotonic() + 240
        while not list(out.rglob("metrics.jsonl")):
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        code, _, err = _run(capsys, *argv)
        _one_line_error(code, err, f"pid {first.pid}")
        gate.touch()
        assert first.wait(timeout=300) == 0, first.communicate()[1]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    folders = sorted(p.parent for p in out.rglob("config.yaml"))
    assert len(folders) == 2
    for folder in folders:
        _assert_consistent(folder, 3)


def test_resume_with_another_norm_leaves_the_run_resumable(tmp_path, capsys):
    config = _config(tmp_path)
    folder = tmp_path / "runs" / "r"
    assert _train(capsys, config)[0] == 0
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != ".lock"}
    code, _, err = _resume(capsys, folder, "model.norm=gn")
    _one_line_error(code, err)
    after = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != ".lock"}
    assert after == before
    assert _resume(capsys, folder, "train.epochs=2")[0] == 0
    _assert_consistent(folder, 2)


# -- silently wrong (7) --------------------------------------------------------------------

_KILL_AT_SECOND_BEST = """
import os, signal, sys
real = os.replace
seen = []

def replace(src, dst, *args, **kwargs):
    if str(dst).endswith("best.pt"):
        seen.append(dst)
        if len(seen) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, *args, **kwargs)

os.replace = replace
from normlab.cli import main
from normlab.train import build_setup, load_config
sys.exit(main(sys.argv[1:]))
"""


def test_kill_between_last_and_best_leaves_no_stale_best(tmp_path, capsys):
    config = _config(tmp_path, train={"epochs": 3})
    folder = tmp_path / "runs" / "r"
    killed = subprocess.run(
        [sys.executable, "-c", _KILL_AT_SECOND_BEST, "train", "-c", str(config), "-q"],
        capture_output=True, text=True, env=_env(), timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    code, _, err = _resume(capsys, folder)
    assert code == 0, err
    _assert_consistent(folder, 3)


def test_two_resumes_of_one_folder_leave_no_extra_rows(tmp_path, capsys):
    config = _config(tmp_path)
    folder = tmp_path / "runs" / "r"
    assert _train(capsys, config)[0] == 0
    argv = ["train", "--resume", str(folder), "-q", "--set", "train.epochs=3"]
    results = _gated_pair(tmp_path, capsys, argv, argv)
    assert any(code == 0 for code, _ in results), results
    for code, err in results:
        if code != 0:
            _one_line_error(code, err, "pid ")
    _assert_consistent(folder, 3)


def _diverging(tmp_path: Path, lr: float) -> Path:
    """Epoch 1 at lr 0 (warm-up), epoch 2 one step at ``lr``: its train loss is finite, the
    step it takes is not."""
    return _config(
        tmp_path,
        data={**TINY["data"], "kwargs": {**TINY["data"]["kwargs"], "train_size": 32}},
        optim={"lr": lr},
        schedule={"name": "multistep", "milestones": [10], "warmup_epochs": 1,
                  "warmup_start_factor": 0.0},
        train={"epochs": 2},
    )


def _assert_stopped_at_epoch_one(folder: Path, err: str, code: int) -> None:
    _one_line_error(code, err)
    for name in ("last.pt", "best.pt"):
        state = _ckpt(folder / name)
        assert state["epoch"] == 1 and _finite(state["model"]), name
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["epochs_done"] == 1 and summary["status"] != "completed"
    assert [r["epoch"] for r in _rows(folder)] == [1]


def test_nonfinite_test_loss_is_divergence(tmp_path, capsys):
    code, _, err = _train(capsys, _diverging(tmp_path, 1e3))
    _assert_stopped_at_epoch_one(tmp_path / "runs" / "r", err, code)


def test_nonfinite_weights_are_divergence(tmp_path, capsys):
    code, _, err = _train(capsys, _diverging(tmp_path, 3e38))
    _assert_stopped_at_epoch_one(tmp_path / "runs" / "r", err, code)


def test_test_split_missing_a_class_keeps_labels(tmp_path, capsys):
    pytest.importorskip("PIL")
    _image_folder(tmp_path / "images", {"train": ["a", "b", "c"], "test": ["a", "c"]}, 24)
    config = _config(
        tmp_path,
        data={"name": "imagefolder", "root": str(tmp_path / "images"), "batch_size": 8,
              "augment": False, "kwargs": {"size": 8}},
        optim={"lr": 0.02},
        train={"epochs": 6},
    )
    code, _, err = _train(capsys, config)
    if code != 0:
        _one_line_error(code, err, "b")
        return
    folder = tmp_path / "runs" / "r"
    _, loaders, model = build_setup(load_config(folder / "config.yaml"))
    model.load_state_dict(_ckpt(folder / "last.pt")["model"])
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, _ in loaders.test:
            truth = x[:, :, 0, 0].argmax(1)  # red -> class 0 (a), blue -> class 2 (c)
            correct += int((model(x).argmax(1) == truth).sum())
            total += len(x)
    assert total == 48 and correct >= 36  # the model learned the colours
    assert json.loads((folder / "summary.json").read_text())["final_acc"] == pytest.approx(
        100.0 * correct / total
    )


def test_eval_batch_size_zero_is_refused(tmp_path, capsys):
    code, _, err = _train(capsys, _config(tmp_path), "data.eval_batch_size=0")
    assert code == 2
    _one_line_error(code, err, "eval_batch_size")
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_nonpositive_eps_is_refused(tmp_path, capsys):
    code, _, err = _train(capsys, _config(tmp_path), "model.norm=gn",
                          "model.kwargs.norm_kwargs={eps: -1.0}")
    _one_line_error(code, err, "eps")
    assert "non-finite" not in err


# -- traceback (12) ------------------------------------------------------------------------


def test_checkpoint_of_another_norm_on_eval_and_resume(tmp_path, capsys):
    bn, gn = tmp_path / "runs" / "bn", tmp_path / "runs" / "gn"
    assert _train(capsys, _config(tmp_path), "run.name=bn")[0] == 0
    assert _train(capsys, _config(tmp_path), "run.name=gn", "model.norm=gn")[0] == 0
    code, _, err = _run(capsys, "eval", bn, "--checkpoint", gn / "last.pt")
    _one_line_error(code, err)
    (bn / "last.pt").write_bytes((gn / "last.pt").read_bytes())
    code, _, err = _resume(capsys, bn, "train.epochs=2")
    _one_line_error(code, err)


def test_vgg_weights_that_are_a_refused_pickle(tmp_path, capsys):
    evil = tmp_path / "vgg.pt"
    torch.save({"features.0.weight": Unsafe()}, evil)
    code, _, err = _run(capsys, "style", "--norms", "bn", "--steps", "1", "--size", "32",
                        "--batch-size", "2", "--out", tmp_path / "style", "-q",
                        "--vgg-weights", evil)
    _one_line_error(code, err, str(evil))


def test_zero_epochs_is_refused(tmp_path, capsys):
    code, _, err = _train(capsys, _config(tmp_path), "train.epochs=0")
    assert code == 2
    _one_line_error(code, err, "epochs")
    assert not list((tmp_path / "runs").rglob("summary.json"))


def test_label_smoothing_out_of_range_is_refused(tmp_path, capsys):
    code, _, err = _train(capsys, _config(tmp_path), "train.label_smoothing=5")
    assert code == 2
    _one_line_error(code, err, "label_smoothing")


def test_bad_model_kwargs_entry_is_refused(tmp_path, capsys):
    code, _, err = _train(capsys, _config(tmp_path), "model.kwargs.no_such_option=1")
    _one_line_error(code, err, "no_such_option")
    assert not list((tmp_path / "runs").rglob("*.pt"))


def test_bad_data_kwargs_entry_is_refused(tmp_path, capsys):
    code, _, err = _train(capsys, _config(tmp_path), "data.kwargs.size=abc")
    _one_line_error(code, err, "size")
    assert not list((tmp_path / "runs").rglob("*.pt"))


def test_decompression_bomb_image(tmp_path, capsys, monkeypatch):
    PIL = pytest.importorskip("PIL.Image")
    _image_folder(tmp_path / "images", {"train": ["a", "b"], "test": ["a", "b"]})
    bomb = tmp_path / "images" / "train" / "b" / "bomb.png"
    PIL.new("RGB", (64, 64)).save(bomb)
    monkeypatch.setattr(PIL, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 > 2 x 1000: a bomb
    config = _config(tmp_path, data={"name": "imagefolder", "root": str(tmp_path / "images"),
                                     "batch_size": 8, "kwargs": {"size": 8}})
    code, _, err = _train(capsys, config)
    _one_line_error(code, err, str(bomb))


def test_extra_class_folder_in_the_test_split(tmp_path, capsys):
    pytest.importorskip("PIL")
    _image_folder(tmp_path / "images", {"train": ["a", "b"], "test": ["a", "b", "d"]})
    config = _config(tmp_path, data={"name": "imagefolder", "root": str(tmp_path / "images"),
                                     "batch_size": 8, "kwargs": {"size": 8}})
    code, _, err = _train(capsys, config)
    _one_line_error(code, err, str(tmp_path / "images" / "test" / "d"))


def test_cifar_with_string_labels(tmp_path, capsys):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        labels: list = [int(v) for v in rng.integers(0, 10, 8)]
        if name == "data_batch_3":
            labels = [str(v) for v in labels]
        batch = {"data": rng.integers(0, 256, (8, 3072), dtype=np.uint8), "labels": labels}
        (root / name).write_bytes(pickle.dumps(batch))
    meta = {"label_names": [f"c{i}" for i in range(10)]}
    (root / "batches.meta").write_bytes(pickle.dumps(meta))
    config = _config(tmp_path, data={"name": "cifar10", "root": str(tmp_path), "kwargs": {}})
    code, _, err = _train(capsys, config)
    _one_line_error(code, err, str(root / "data_batch_3"))


def test_style_with_a_diverging_loss(tmp_path, capsys):
    out = tmp_path / "style"
    code, _, err = _run(capsys, "style", "--norms", "bn", "--steps", "3", "--size", "32",
                        "--batch-size", "2", "--lr", "1e30", "--style-weight", "1e30",
                        "--out", out, "-q")
    if code == 0:
        results = [json.loads(p.read_text()) for p in out.rglob("bn.json")]
        assert results, "a finished style run leaves its result"
    else:
        _one_line_error(code, err)


def _refuse_writes_under(monkeypatch, folder: Path, error: int) -> None:
    """Every create/write below ``folder`` fails with ``error`` (root ignores chmod)."""
    real_open, real_os_open, real_mkdir = open, os.open, os.mkdir
    prefix = str(folder)

    def refuse(path) -> None:
        if str(path).startswith(prefix):
            raise OSError(error, os.strerror(error), str(path))

    def fake_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def fake_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        refuse(path)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)


def test_read_only_output_folder(tmp_path, capsys, monkeypatch):
    config = _config(tmp_path)
    (tmp_path / "runs").mkdir()
    _refuse_writes_under(monkeypatch, tmp_path / "runs", errno.EROFS)
    code, _, err = _train(capsys, config)
    _one_line_error(code, err, "Read-only file system")
    monkeypatch.undo()
    assert not list((tmp_path / "runs").rglob("*"))


def test_full_disk(tmp_path, capsys, monkeypatch):
    config = _config(tmp_path, train={"epochs": 2})
    folder = tmp_path / "runs" / "r"
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("epoch", 0) >= 2:
            f.write(b"partial")
            _refuse_writes_under(monkeypatch, folder, errno.ENOSPC)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    code, _, err = _train(capsys, config)
    _one_line_error(code, err, "No space left on device")
    monkeypatch.undo()
    assert _ckpt(folder / "last.pt")["epoch"] == 1
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["epochs_done"] <= 1 and summary["status"] != "completed"
    assert not list(folder.glob("*.tmp"))
    assert _resume(capsys, folder)[0] == 0
    _assert_consistent(folder, 2)
