"""Run folders, exact resume, crash recovery, NaN stop and evaluation, on a tiny model."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from normlab.train import (
    CheckpointError,
    NonFiniteLossError,
    RunDirError,
    evaluate_run,
    load_checkpoint,
    resume,
    train,
)
from normlab.train.errors import ConfigError
from normlab.train.parallel import Parallel
from normlab.train.run_folder import FolderLock, RunFolder
from normlab.train.runner import _Run

from .tiny import tiny_builders


def _weights(path):
    return load_checkpoint(path)["model"]


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_run_folder_is_complete(tiny_config):
    summary = train(tiny_config(), builders=tiny_builders(), log=None)
    run = tiny_config().run
    folder = Path(run.out_dir) / run.name
    names = {p.name for p in folder.iterdir()}
    expected = {"config.yaml", "metrics.jsonl", "summary.json", "last.pt", "prev.pt", "best.pt"}
    assert expected <= names
    assert not [n for n in names if n.endswith(".tmp")]
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("lr", "train_loss", "train_acc", "test_loss", "test_acc", "time_s"):
        assert key in rows[0]
    assert rows[0]["lr"] == pytest.approx(0.1) and rows[1]["lr"] == pytest.approx(0.05)
    saved = json.loads((folder / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert saved["status"] == "completed" and saved["epochs_done"] == 2
    assert saved["final_acc"] == rows[-1]["test_acc"]
    assert saved["best_acc"] == max(r["test_acc"] for r in rows)
    for key in ("torch_version", "device", "git_commit", "time_s"):
        assert key in saved
    assert load_checkpoint(folder / "best.pt")["epoch"] == saved["best_epoch"]


def test_resume_reproduces_weights_exactly(tiny_config, tmp_path):
    straight = tiny_config(run={"name": "straight"})
    train(straight, builders=tiny_builders(), log=None)
    half = tiny_config(run={"name": "half"}, train={"epochs": 1})
    train(half, builders=tiny_builders(), log=None)
    folder = tmp_path / "runs" / "half"
    resume(folder, overrides=["train.epochs=2"], builders=tiny_builders(), log=None)
    _assert_same(_weights(tmp_path / "runs/straight/last.pt"), _weights(folder / "last.pt"))
    a = load_checkpoint(tmp_path / "runs/straight/last.pt")["optimizer"]["state"]
    b = load_checkpoint(folder / "last.pt")["optimizer"]["state"]
    for key in a:
        assert torch.equal(a[key]["momentum_buffer"], b[key]["momentum_buffer"])
    rows = (folder / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2]


def test_interrupted_run_resumes_to_same_weights(tiny_config, tmp_path):
    train(tiny_config(run={"name": "straight"}), builders=tiny_builders(), log=None)

    def crash(info):
        if info.epoch == 1 and info.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(
            tiny_config(run={"name": "crashed"}),
            builders=tiny_builders(),
            callbacks=[crash],
            log=None,
        )
    folder = tmp_path / "runs" / "crashed"
    assert json.loads((folder / "summary.json").read_text())["status"] == "interrupted"
    assert load_checkpoint(folder / "last.pt")["epoch"] == 1
    resume(folder, builders=tiny_builders(), log=None)
    _assert_same(_weights(tmp_path / "runs/straight/last.pt"), _weights(folder / "last.pt"))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_config, tmp_path):
    with pytest.raises(NonFiniteLossError, match="last good checkpoint") as info:
        train(tiny_config(), builders=tiny_builders(poison=(1, 2)), log=None)
    assert (info.value.epoch, info.value.step) == (1, 2)
    folder = tmp_path / "runs" / "tiny"
    ckpt = load_checkpoint(folder / "last.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "stopped_nonfinite_loss"
    assert "last.pt" in summary["message"]
    assert len((folder / "metrics.jsonl").read_text().splitlines()) == 1


def test_existing_run_folder_is_not_overwritten(tiny_config):
    train(tiny_config(train={"epochs": 1}), builders=tiny_builders(), log=None)
    with pytest.raises(RunDirError, match="--resume"):
        train(tiny_config(train={"epochs": 1}), builders=tiny_builders(), log=None)


def test_resume_from_corrupt_last_names_previous(tiny_config, tmp_path):
    train(tiny_config(), builders=tiny_builders(), log=None)
    folder = tmp_path / "runs" / "tiny"
    data = (folder / "last.pt").read_bytes()
    (folder / "last.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="prev.pt"):
        resume(folder, builders=tiny_builders(), log=None)
    summary = resume(folder / "prev.pt", builders=tiny_builders(), log=None)
    assert summary["epochs_done"] == 2


def test_evaluate_run_with_recomputed_stats(tiny_config, tmp_path):
    train(tiny_config(model={"norm": "bn"}), builders=tiny_builders(), log=None)
    folder = tmp_path / "runs" / "tiny"
    result = evaluate_run(folder, builders=tiny_builders())
    metrics = [json.loads(r) for r in (folder / "metrics.jsonl").read_text().splitlines()]
    assert result["test_acc"] == pytest.approx(metrics[-1]["test_acc"])
    again = evaluate_run(
        folder, checkpoint="best.pt", recompute_stats=100, builders=tiny_builders()
    )
    assert again["num_batches"] == 8
    assert 0 <= again["recomputed"]["test_acc"] <= 100


def test_channels_last_is_a_no_op_on_cpu_and_bf16_autocast_is_not(tiny_config, tmp_path):
    train(tiny_config(run={"name": "plain"}), builders=tiny_builders(), log=None)
    flags = {"channels_last": True}
    train(tiny_config(run={"name": "flags"}, train=flags), builders=tiny_builders(), log=None)
    plain = _weights(tmp_path / "runs/plain/last.pt")
    _assert_same(plain, _weights(tmp_path / "runs/flags/last.pt"))
    train(tiny_config(run={"name": "bf16"}, train={"amp": "bf16"}), builders=tiny_builders(),
          log=None)
    bf16 = _weights(tmp_path / "runs/bf16/last.pt")
    assert not torch.equal(plain["conv.weight"], bf16["conv.weight"])
    torch.testing.assert_close(plain["conv.weight"], bf16["conv.weight"], atol=0.05, rtol=0)


def test_gradient_clipping_changes_the_update(tiny_config, tmp_path):
    train(tiny_config(run={"name": "plain"}), builders=tiny_builders(), log=None)
    cfg = tiny_config(run={"name": "clip"}, optim={"grad_clip": 0.01, "nesterov": True})
    train(cfg, builders=tiny_builders(), log=None)
    a, b = _weights(tmp_path / "runs/plain/last.pt"), _weights(tmp_path / "runs/clip/last.pt")
    assert not torch.equal(a["conv.weight"], b["conv.weight"])
    assert torch.isfinite(b["conv.weight"]).all()


def test_bin_gates_get_their_role_and_stay_clamped(tiny_config, tmp_path):
    seen = []
    train(
        tiny_config(optim={"lr": 5.0}),
        builders=tiny_builders(),
        callbacks=[lambda info: seen.append(info)],
        log=None,
    )
    ckpt = load_checkpoint(tmp_path / "runs/tiny/last.pt")
    gate = ckpt["model"]["norm.gate"]
    assert gate.min() >= 0 and gate.max() <= 1
    groups = ckpt["optimizer"]["param_groups"]
    gate_group = next(g for g in groups if g.get("role") == "gate")
    assert gate_group["initial_lr"] == pytest.approx(10 * 5.0)
    assert gate_group["weight_decay"] == 0


def test_tensorboard_requested_but_missing_is_a_clear_error(tiny_config, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(RunDirError, match="pip install normlab\\[tensorboard\\]"):
        train(tiny_config(run={"tensorboard": True}), builders=tiny_builders(), log=None)


def test_compiled_model_trains_and_saves_plain_state(tiny_config, tmp_path, monkeypatch):
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model: real_compile(model, backend="eager"))
    train(tiny_config(train={"compile": True, "epochs": 1}), builders=tiny_builders(), log=None)
    state = _weights(tmp_path / "runs/tiny/last.pt")
    assert "conv.weight" in state and not any(k.startswith("_orig_mod") for k in state)


def _keeping_model(models):
    """Builders whose model builder remembers the models it made."""
    base = tiny_builders()

    def model(cfg, *, num_classes, in_chans):
        models.append(base.model(cfg, num_classes=num_classes, in_chans=in_chans))
        return models[-1]

    return dataclasses.replace(base, model=model)


def _stopped_after_one_good_epoch(folder):
    ckpt = load_checkpoint(folder / "last.pt")
    assert ckpt["epoch"] == 1 and load_checkpoint(folder / "best.pt")["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "stopped_nonfinite_loss" and summary["epochs_done"] == 1
    assert "last good checkpoint" in summary["message"]
    rows = (folder / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1]


def test_a_blow_up_on_an_epochs_last_step_is_divergence(tiny_config, tmp_path):
    models = []

    def blow_up(info):  # the last update of epoch 2 leaves infinite weights behind
        if info.epoch == 1 and info.step == info.steps_per_epoch - 1:
            with torch.no_grad():
                models[0].fc.weight.fill_(float("inf"))

    with pytest.raises(NonFiniteLossError, match=r"after epoch 2.*last good checkpoint"):
        train(tiny_config(train={"epochs": 3}), builders=_keeping_model(models),
              callbacks=[blow_up], log=None)
    _stopped_after_one_good_epoch(tmp_path / "runs" / "tiny")


class _NanOnPass:
    """A test loader whose ``bad``-th pass yields NaN inputs (the weights stay finite)."""

    def __init__(self, loader, bad):
        self.loader, self.bad, self.passes = loader, bad, 0

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        self.passes += 1
        for x, y in self.loader:
            yield (x * float("nan") if self.passes == self.bad else x), y


def test_a_non_finite_test_loss_is_divergence(tiny_config, tmp_path):
    base = tiny_builders()

    def loaders(data, *, seed, device):
        made = base.loaders(data, seed=seed, device=device)
        return dataclasses.replace(made, test=_NanOnPass(made.test, bad=2))

    with pytest.raises(NonFiniteLossError, match="test_loss became nan after epoch 2"):
        train(tiny_config(train={"epochs": 3}), builders=dataclasses.replace(base, loaders=loaders),
              log=None)
    _stopped_after_one_good_epoch(tmp_path / "runs" / "tiny")


def _files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != ".lock"}


def test_a_checkpoint_of_another_norm_is_refused_before_anything_is_written(tiny_config, tmp_path):
    train(tiny_config(train={"epochs": 1}), builders=tiny_builders(), log=None)
    folder = tmp_path / "runs" / "tiny"
    before = _files(folder)
    message = r"checkpoint was trained with model.norm=bin, config says bn"
    with pytest.raises(CheckpointError, match=message) as info:
        resume(folder, overrides=["model.norm=bn"], builders=tiny_builders(), log=None)
    assert "\n" not in str(info.value)
    assert _files(folder) == before
    with pytest.raises(CheckpointError, match=message):
        evaluate_run(folder, overrides=["model.norm=bn"], builders=tiny_builders())
    summary = resume(folder, overrides=["train.epochs=2"], builders=tiny_builders(), log=None)
    assert summary["epochs_done"] == 2 and summary["status"] == "completed"


def test_weights_that_do_not_fit_the_model_are_a_one_line_error(tiny_config, tmp_path):
    train(tiny_config(train={"epochs": 1}), builders=tiny_builders(), log=None)
    folder = tmp_path / "runs" / "tiny"
    ckpt = load_checkpoint(folder / "last.pt")
    del ckpt["config"]  # an old checkpoint: only the tensors can tell
    ckpt["model"]["fc.weight"] = torch.zeros(3, 8)
    torch.save(ckpt, folder / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt does not fit the config's model") as info:
        evaluate_run(folder, checkpoint="other.pt", builders=tiny_builders())
    assert "\n" not in str(info.value)


def test_a_folder_in_use_is_not_resumed(tiny_config, tmp_path):
    train(tiny_config(train={"epochs": 1}), builders=tiny_builders(), log=None)
    folder = tmp_path / "runs" / "tiny"
    before = _files(folder)
    with FolderLock(folder):
        with pytest.raises(RunDirError, match=rf"in use by another process \(pid {os.getpid()}"):
            resume(folder, overrides=["train.epochs=2"], builders=tiny_builders(), log=None)
    assert _files(folder) == before


def test_resume_repairs_the_folder_first(tiny_config, tmp_path):
    train(tiny_config(train={"epochs": 1}), builders=tiny_builders(), log=None)
    folder = tmp_path / "runs" / "tiny"
    (folder / "best.pt.tmp").write_bytes(b"half a checkpoint")
    lines = []
    resume(folder, overrides=["train.epochs=2"], builders=tiny_builders(), log=lines.append)
    assert lines[0] == f"repaired {folder}: removed the unfinished write best.pt.tmp"
    assert not (folder / "best.pt.tmp").exists()


def test_virtual_batches_with_synced_statistics_on_two_processes_is_a_config_error(
    tiny_config, tmp_path
):
    config = tiny_config(model={"virtual_batch_size": 4})
    folder = RunFolder.create(tmp_path / "runs", "vbs", "vbs")
    with pytest.raises(ConfigError, match="train.sync_stats=false"):
        _Run(config, folder, tiny_builders(), (), False, None,
             (Parallel(rank=0, world_size=2), torch.device("cpu")))
