"""Mix-datasets attack (IEBN Table 3) in the engine: ``data.mix`` config, runs, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import normlab
from normlab.data import DeviceLoader, count_primary_correct, create_dataset
from normlab.tasks.classification import evaluate_classifier as evaluate
from normlab.train import (
    Builders,
    ConfigError,
    apply_overrides,
    build_setup,
    config_from_dict,
    evaluate_run,
    load_checkpoint,
    load_config,
    resume,
    save_config,
    train,
)

PRIMARY_CLASSES, SECONDARY_CLASSES = 10, 3
MIX = {
    "dataset": "synthetic",
    "k": 2,
    "secondary_per_k": 8,
    "kwargs": {"num_classes": SECONDARY_CLASSES, "train_size": 96},
}
DATA = {"name": "digits", "kwargs": {"size": 8}, "batch_size": 64, "augment": False, "mix": MIX}


class _MixNet(nn.Module):
    """conv → norm → ReLU → linear on 8×8 images; in eval mode a fixed ``offset`` is added to
    the first secondary logit: with a large offset, an argmax over all outputs always
    answers that secondary class at test time, and only a primary-only argmax can score."""

    def __init__(self, num_classes: int, in_chans: int, norm: str, offset: float = 0.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, 8, 3, padding=1, bias=False)
        self.norm = normlab.create_norm(norm, 8)
        self.fc = nn.Linear(8 * 8 * 8, num_classes)
        bias = torch.zeros(num_classes)
        bias[PRIMARY_CLASSES] = offset
        self.register_buffer("offset", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.norm(self.conv(x))).flatten(1)
        return self.fc(h) if self.training else self.fc(h) + self.offset


def _builders(offset: float = 0.0) -> Builders:
    def model(cfg, *, num_classes, in_chans):
        return _MixNet(num_classes, in_chans, cfg.norm, offset)

    return Builders(model=model)


BUILDERS = _builders()
OFFSET = 100.0


@pytest.fixture
def mix_config(tiny_config):
    def make(**sections):
        data = {**DATA, **sections.pop("data", {})}
        model = {"norm": "iebn", **sections.pop("model", {})}
        return tiny_config(model=model, data=data, **sections)

    return make


# --- config -------------------------------------------------------------------------------


def test_mix_recipes_parse_with_k_override():
    cfg = load_config("iebn_cifar100_mix_mnist", ["data.mix.k=3"])
    assert (cfg.model.name, cfg.model.norm, cfg.data.name) == ("resnet164", "iebn", "cifar100")
    assert cfg.schedule.milestones == [81, 122] and cfg.train.epochs == 180
    mix = cfg.data.mix
    assert (mix.dataset, mix.k, mix.secondary_per_k) == ("mnist", 3, 120)
    assert cfg.data.batch_size == 100 and cfg.data.train_batch == 100 + 3 * 120
    fashion = load_config("iebn_cifar100_mix_fashion")
    assert fashion.data.mix.dataset == "fashion_mnist" and fashion.data.mix.k == 2
    assert fashion.data.train_batch == 340
    tiny = load_config("iebn_cifar100_mix_fashion_tiny")
    assert tiny.data.mix.dataset == "synthetic" and tiny.data.mix.root is None


def test_mix_section_is_optional_and_switchable():
    assert config_from_dict({}).data.mix is None
    assert config_from_dict({}).data.train_batch == 128
    cfg = config_from_dict(apply_overrides({}, ["data.mix.k=3"]))
    assert cfg.data.mix.k == 3 and cfg.data.mix.dataset == "mnist"
    assert cfg.data.train_batch == 128 + 3 * 120
    off = load_config("iebn_cifar100_mix_mnist", ["data.mix=null"])
    assert off.data.mix is None and off.data.train_batch == 100
    free = apply_overrides({}, ["data.mix.dataset=synthetic", "data.mix.kwargs.noise=0.3"])
    assert config_from_dict(free).data.mix.kwargs == {"noise": 0.3}


def test_mix_config_round_trips(tmp_path):
    cfg = load_config("iebn_cifar100_mix_mnist_tiny", ["data.mix.k=3"])
    save_config(cfg, tmp_path / "out.yaml")
    assert load_config(tmp_path / "out.yaml") == cfg


def test_unknown_mix_keys_are_rejected_with_valid_keys():
    with pytest.raises(ConfigError) as info:
        apply_overrides({}, ["data.mix.kk=2"])
    message = str(info.value)
    assert "'data.mix.kk'" in message and "Did you mean 'k'" in message
    assert "secondary_per_k" in message
    with pytest.raises(ConfigError, match="unknown config key 'data.mix.datset'"):
        config_from_dict({"data": {"mix": {"datset": "mnist"}}})
    with pytest.raises(ConfigError, match="unknown config key 'data.mix.primary_batch'"):
        config_from_dict({"data": {"mix": {"primary_batch": 100}}})


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        ({"mix": {"k": -1}}, "data.mix.k must be >= 0"),
        ({"mix": {"secondary_per_k": -5}}, "data.mix.secondary_per_k must be >= 0"),
        ({"mix": {"normalize": "mine"}}, "'primary' or 'own'"),
        ({"mix": {"k": "two"}}, "'data.mix.k' expects int"),
        ({"mix": "mnist"}, "'data.mix' must be a mapping"),
        ({"mix": {"k": 2}, "drop_last": False}, "leave data.drop_last=true"),
        ({"batch_size": 0}, "data.batch_size must be >= 1"),
    ],
)
def test_bad_mix_settings_are_rejected(data, pattern):
    with pytest.raises(ConfigError, match=pattern):
        config_from_dict({"data": data})


def test_mix_override_of_the_whole_section_needs_a_key():
    with pytest.raises(ConfigError, match="is a section.*=null"):
        apply_overrides({}, ["data.mix=3"])


def test_unmixable_shapes_and_too_few_outputs_are_config_errors(mix_config):
    wrong_size = mix_config(data={"mix": {**MIX, "kwargs": {**MIX["kwargs"], "size": 12}}})
    with pytest.raises(ConfigError, match="cannot mix digits with synthetic.*image shapes"):
        build_setup(wrong_size, BUILDERS)
    outputs = mix_config(model={"name": "resnet20", "num_classes": PRIMARY_CLASSES})
    with pytest.raises(ConfigError, match="model.num_classes=10 is fewer than the 13"):
        build_setup(outputs)


# --- runs ---------------------------------------------------------------------------------


def test_loaders_mix_batches_and_size_the_model(mix_config):
    _, loaders, model = build_setup(mix_config(), BUILDERS)
    assert loaders.num_classes == PRIMARY_CLASSES + SECONDARY_CLASSES
    assert loaders.test_classes == PRIMARY_CLASSES
    assert model.fc.out_features == PRIMARY_CLASSES + SECONDARY_CLASSES
    x, y = next(iter(loaders.train))
    assert x.shape == (64 + 2 * 8, 3, 8, 8)
    assert (y[:64] < PRIMARY_CLASSES).all() and (y[64:] >= PRIMARY_CLASSES).all()
    test_x, test_y = next(iter(loaders.test))
    assert test_x.shape[2:] == (8, 8) and (test_y < PRIMARY_CLASSES).all()


def _primary_accuracy(weights, norm: str) -> float:
    """Digits test accuracy of ``weights`` with the argmax over the 10 digit classes only."""
    model = _MixNet(PRIMARY_CLASSES + SECONDARY_CLASSES, 3, norm, OFFSET)
    model.load_state_dict(weights)
    model.eval()
    test = create_dataset("digits", split="test", size=8)
    correct = 0
    with torch.no_grad():
        for x, y in DeviceLoader(test, 100, train=False, augment=False, drop_last=False):
            correct += count_primary_correct(model(x), y, PRIMARY_CLASSES)
    return 100.0 * correct / len(test)


def test_mixed_run_reports_primary_only_test_accuracy(mix_config, tmp_path):
    cfg = mix_config(optim={"lr_reference_batch": 64})
    builders = _builders(OFFSET)
    summary = train(cfg, builders=builders, log=None)
    folder = Path(cfg.run.out_dir) / cfg.run.name
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["lr"] == pytest.approx(0.1 * 80 / 64)  # scaled with the mixed batch
    weights = load_checkpoint(folder / "last.pt")["model"]
    assert weights["fc.weight"].shape[0] == PRIMARY_CLASSES + SECONDARY_CLASSES
    expected = _primary_accuracy(weights, "iebn")
    assert expected > 50  # learnt something; an argmax over all outputs would score 0
    assert summary["final_acc"] == pytest.approx(expected, abs=1e-9)
    assert rows[-1]["test_acc"] == pytest.approx(expected, abs=1e-9)
    evaluated = evaluate_run(folder, builders=builders)["test_acc"]
    assert evaluated == pytest.approx(expected, abs=1e-9)


class _SecondaryFavouring(torch.nn.Module):
    """Logits that put the largest value on a secondary class and the label second."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        labels = x[:, 0].long()
        logits = torch.zeros(len(x), PRIMARY_CLASSES + SECONDARY_CLASSES)
        logits[torch.arange(len(x)), labels] = 1.0
        logits[:, PRIMARY_CLASSES] = 2.0
        return logits


def test_evaluate_scores_only_the_primary_columns():
    y = torch.arange(20) % PRIMARY_CLASSES
    batches = [(y[:, None].float(), y)]
    model, cpu = _SecondaryFavouring(), torch.device("cpu")
    assert evaluate(model, batches, device=cpu)["test_acc"] == 0.0
    primary = evaluate(model, batches, device=cpu, classes=PRIMARY_CLASSES)
    assert primary["test_acc"] == 100.0
    expected_loss = torch.nn.functional.cross_entropy(model(batches[0][0])[:, :10], y)
    assert primary["test_loss"] == pytest.approx(expected_loss.item())


def test_mixed_resume_reproduces_weights_exactly(mix_config, tmp_path):
    augment = {"augment": True}  # crop/flip draws from the loader's seeded generator
    straight = mix_config(run={"name": "straight"}, data=augment)
    train(straight, builders=BUILDERS, log=None)
    half = mix_config(run={"name": "half"}, train={"epochs": 1}, data=augment)
    train(half, builders=BUILDERS, log=None)
    folder = tmp_path / "runs" / "half"
    assert load_checkpoint(folder / "last.pt")["loader"]["epoch"] == 1
    resume(folder, overrides=["train.epochs=2"], builders=BUILDERS, log=None)
    a = load_checkpoint(tmp_path / "runs/straight/last.pt")["model"]
    b = load_checkpoint(folder / "last.pt")["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows = [json.loads(r) for r in (folder / "metrics.jsonl").read_text().splitlines()]
    straight_rows = (tmp_path / "runs/straight/metrics.jsonl").read_text().splitlines()
    assert rows[-1]["test_acc"] == json.loads(straight_rows[-1])["test_acc"]
