"""Checkpoints inside an epoch (run.checkpoint_every): a run stopped between two of them,
by an exception or by ``kill -9``, resumes from the next unseen batch to the same weights
and metrics rows, bit for bit on CPU, as a run that was never stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from normlab.data import DeviceLoader, ImageData
from normlab.tasks.classification import TrainAccuracy
from normlab.train import Builders, ConfigError, load_checkpoint, resume, train
from normlab.train.config import config_to_dict
from normlab.train.factory import Loaders, build_optimizer
from normlab.train.parallel import Parallel
from normlab.train.run_folder import RunFolder
from normlab.train.task import GatherMetric, StepResult

from .tiny import TinyNet, tiny_builders

TIMING = ("time_s", "eval_time_s", "images_per_s", "data_wait_s")
ROOT = Path(__file__).resolve().parents[2]


def _image_data(n: int, seed: int) -> ImageData:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    base = torch.tensor([40, 100, 160, 220])[labels].view(n, 1, 1, 1)
    noise = torch.randint(-30, 30, (n, 3, 8, 8), generator=g)
    images = (base + noise).clamp(0, 255).to(torch.uint8)
    return ImageData(images, labels, 4, ["a", "b", "c", "d"], (0.5,) * 3, (0.25,) * 3, "tiny")


def position_builders() -> Builders:
    """Tiny builders whose training loader keeps its position inside an epoch."""

    def loaders(data, *, seed, device):
        train_loader = DeviceLoader(_image_data(96, 1), data.batch_size, train=True, seed=seed,
                                    device=device)
        test = DeviceLoader(_image_data(40, 2), 16, train=False, device=device)
        return Loaders(train_loader, test, num_classes=4, in_chans=3)

    def model(cfg, *, num_classes, in_chans):
        return TinyNet(num_classes, in_chans, cfg.norm)  # with dropout: the global RNG

    return Builders(loaders=loaders, model=model, optimizer=build_optimizer)


def _run(tmp_path: Path, name: str) -> Path:
    return tmp_path / "runs" / name


def _rows(folder: Path) -> list[dict]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert all(key in row for row in rows for key in TIMING)
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def _assert_same_run(a: Path, b: Path) -> None:
    first, second = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    assert first["epoch"] == second["epoch"] and second["step"] == 0
    for key, value in first["model"].items():
        assert torch.equal(value, second["model"][key]), key
    for key, state in first["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"],
                           second["optimizer"]["state"][key]["momentum_buffer"])
    assert _rows(a) == _rows(b)
    summary = json.loads((b / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps_done_in_epoch"] == 0


@pytest.fixture
def straight(tiny_config, tmp_path):
    train(tiny_config(run={"name": "straight"}), builders=position_builders(), log=None)
    return _run(tmp_path, "straight")


def _crash_at(epoch: int, step: int):
    def crash(info):
        if (info.epoch, info.step) == (epoch, step):
            raise KeyboardInterrupt

    return crash


@pytest.mark.parametrize(("epoch", "step", "saved"), [(1, 4, 4), (0, 2, 2), (1, 0, 0)])
def test_a_run_stopped_inside_an_epoch_resumes_from_the_next_unseen_batch(
    tiny_config, tmp_path, straight, epoch, step, saved
):
    config = tiny_config(run={"name": "stopped", "checkpoint_every": 2})
    with pytest.raises(KeyboardInterrupt):
        train(config, builders=position_builders(), callbacks=[_crash_at(epoch, step)], log=None)
    folder = _run(tmp_path, "stopped")
    ckpt = load_checkpoint(folder / "last.pt")
    assert (ckpt["epoch"], ckpt["step"], ckpt["loader"]["batch"]) == (epoch, saved, saved)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert (summary["epochs_done"], summary["steps_done_in_epoch"]) == (epoch, saved)
    assert len(_rows(folder) if (folder / "metrics.jsonl").exists() else []) == epoch
    lines = []
    resume(folder, builders=position_builders(), log=lines.append)
    where = f"epoch {epoch}" + (f", step {saved} of epoch {epoch + 1}" if saved else "")
    assert f"resumed {folder} from last.pt at {where} (of 2 epochs)" in lines
    _assert_same_run(straight, folder)


_KILLED = """
import json, pathlib, sys, time
import torch
torch.set_num_threads(1)
from normlab.train import config_from_dict, train
from tests.train.test_engine_resume import position_builders
raw, marker = json.loads(sys.argv[1]), pathlib.Path(sys.argv[2])
def hang(info):
    if (info.epoch, info.step) == (1, 2):  # the 3rd step: after the checkpoint at 2, before 4
        marker.write_text("checkpointed")
        time.sleep(600)
train(config_from_dict(raw), builders=position_builders(), callbacks=[hang], log=None)
"""


@pytest.mark.slow
def test_a_run_killed_with_sigkill_between_checkpoints_resumes_exactly(
    tiny_config, tmp_path, straight
):
    config = tiny_config(run={"name": "killed", "checkpoint_every": 2})
    marker = tmp_path / "marker"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")]),
           "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", _KILLED, json.dumps(config_to_dict(config)), str(marker)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert process.poll() is None, process.communicate()[0].decode()[-2000:]
            assert time.monotonic() < deadline, "the training process never checkpointed"
            time.sleep(0.1)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    folder = _run(tmp_path, "killed")
    ckpt = load_checkpoint(folder / "last.pt")
    assert (ckpt["epoch"], ckpt["step"]) == (1, 2)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "running"  # a killed process writes nothing more
    assert (summary["epochs_done"], summary["steps_done_in_epoch"]) == (1, 2)
    resume(folder, builders=position_builders(), log=None)
    _assert_same_run(straight, folder)


def test_recover_corrects_a_summary_ahead_of_the_checkpoint(tiny_config, tmp_path):
    config = tiny_config(run={"name": "ahead", "checkpoint_every": 2})
    with pytest.raises(KeyboardInterrupt):
        train(config, builders=position_builders(), callbacks=[_crash_at(1, 2)], log=None)
    folder = RunFolder(_run(tmp_path, "ahead"))
    summary = folder.read_summary()
    folder.write_summary({**summary, "steps_done_in_epoch": 4})
    assert folder.recover() == [
        "summary.json: claimed epoch 1, step 4 of epoch 2, last.pt holds epoch 1, step 2 of "
        "epoch 2; corrected"
    ]
    assert folder.read_summary()["steps_done_in_epoch"] == 2
    assert folder.recover() == []


def test_checkpoints_inside_an_epoch_need_a_loader_with_a_position(tiny_config):
    config = tiny_config(run={"checkpoint_every": 2})
    with pytest.raises(ConfigError, match="run.checkpoint_every needs a training loader that "
                                          "keeps its position inside an epoch"):
        train(config, builders=tiny_builders(), log=None)


class _Records(GatherMetric):
    def update(self, batch, output):
        self.records.append(int(output))

    def score(self, records):
        return {"total": float(sum(records)), "count": float(len(records))}


def test_metric_states_continue_where_they_were_saved():
    accuracy = TrainAccuracy(torch.device("cpu"))
    y = torch.tensor([0, 1, 1])
    accuracy.update((None, y), StepResult(torch.tensor(0.5), torch.eye(3)[[0, 1, 2]]))
    restored = TrainAccuracy(torch.device("cpu"))
    restored.load_state_dict(accuracy.state_dict())
    assert restored.compute(Parallel()) == accuracy.compute(Parallel())
    other = TrainAccuracy(torch.device("cpu"))
    other.load_state_dict(accuracy.state_dict(), Parallel(1, 2))  # not the main process
    assert all(int(v) == 0 for v in other.states.values())
    records = _Records()
    for value in (3, 4):
        records.update(None, value)
    again = _Records()
    again.load_state_dict(records.state_dict())
    again.update(None, 5)
    assert again.compute(Parallel()) == {"total": 12.0, "count": 3.0}
    with pytest.raises(ValueError, match="metric state has"):
        restored.load_state_dict({"seen": torch.tensor(1)})
