"""Config schema, YAML inheritance and ``--set`` overrides."""

from __future__ import annotations

import pytest

from normlab.train import (
    ConfigError,
    apply_overrides,
    config_from_dict,
    find_config,
    list_configs,
    load_config,
    save_config,
)


def test_overrides_parse_yaml_scalars(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: resnet20}\noptim: {lr: 0.1}\n")
    cfg = load_config(
        path,
        [
            "optim.lr=0.05",
            "model.norm=iebn",
            "schedule.milestones=[2, 4]",
            "optim.grad_clip=null",
            "optim.nesterov=true",
            "model.kwargs.drop_rate=0.5",
            "train.epochs=3",
        ],
    )
    assert cfg.optim.lr == 0.05 and cfg.model.norm == "iebn"
    assert cfg.schedule.milestones == [2.0, 4.0]
    assert cfg.optim.grad_clip is None and cfg.optim.nesterov is True
    assert cfg.model.kwargs == {"drop_rate": 0.5}
    assert cfg.train.epochs == 3 and cfg.model.name == "resnet20"


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as info:
        apply_overrides({}, ["optim.lrr=0.1"])
    message = str(info.value)
    assert "'optim.lrr'" in message and "Did you mean 'lr'" in message
    assert "momentum" in message and "weight_decay" in message
    with pytest.raises(ConfigError, match="Valid keys at the top level"):
        apply_overrides({}, ["optimizer.lr=0.1"])
    with pytest.raises(ConfigError, match="unknown config key 'train.epoch'"):
        config_from_dict({"train": {"epoch": 3}})


@pytest.mark.parametrize(
    ("item", "pattern"),
    [
        ("optim.lr", "section.key=value"),
        ("=3", "section.key=value"),
        ("optim=3", "is a section"),
        ("optim.lr.x=3", "has no sub-keys"),
        ("optim.lr=[1", "not a YAML"),
    ],
)
def test_malformed_overrides(item, pattern):
    with pytest.raises(ConfigError, match=pattern):
        apply_overrides({}, [item])


def test_wrong_types_are_rejected():
    with pytest.raises(ConfigError, match="'train.epochs' expects int"):
        config_from_dict({"train": {"epochs": "ten"}})
    with pytest.raises(ConfigError, match="'optim.nesterov' expects bool"):
        config_from_dict({"optim": {"nesterov": 1}})
    assert config_from_dict({"optim": {"lr": 1}}).optim.lr == 1.0
    assert (
        load_config("iebn_cifar_resnet164", ["optim.weight_decay=5e-4"]).optim.weight_decay == 5e-4
    )
    with pytest.raises(ConfigError, match="expects float"):
        config_from_dict({"optim": {"lr": "fast"}})


def test_base_inheritance_and_round_trip(tmp_path):
    (tmp_path / "parent.yaml").write_text(
        "description: parent\noptim: {lr: 0.2, momentum: 0.8}\ntrain: {epochs: 9}\n"
    )
    (tmp_path / "child.yaml").write_text("base: parent.yaml\noptim: {lr: 0.05}\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.train.epochs) == (0.05, 0.8, 9)
    save_config(cfg, tmp_path / "out.yaml")
    assert load_config(tmp_path / "out.yaml") == cfg


def test_inheritance_cycle_is_reported(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_unknown_config_name_suggests_close_names():
    with pytest.raises(ConfigError, match="neither a file nor a shipped config"):
        find_config("no_such_recipe")


def test_every_shipped_config_is_valid():
    names = list_configs()
    assert names, "no configs shipped"
    for name in names:
        cfg = load_config(name)
        assert cfg.description, name
        if name.endswith("_tiny"):
            assert cfg.data.name == "digits" and cfg.data.root is None, name
            assert name.removesuffix("_tiny") in names, name
        else:
            assert f"{name}_tiny" in names, name


def test_noise_and_virtual_batch_size_reach_every_norm_of_the_built_model():
    from normlab.norms import BatchStatistics, NormBase
    from normlab.train.factory import build_model

    config = load_config("iebn_cifar_resnet164_tiny",
                         ["model.noise=[0.8,0.5]", "model.virtual_batch_size=4"])
    model = build_model(config.model, num_classes=10, in_chans=3)
    norms = [m for m in model.modules() if isinstance(m, NormBase)]
    assert norms and all(m.noise == (0.8, 0.5) for m in norms)
    assert all(m.virtual_batch_size == 4 for m in norms if isinstance(m, BatchStatistics))
    plain = build_model(load_config("iebn_cifar_resnet164_tiny").model, num_classes=10,
                        in_chans=3)
    assert all(m.noise is None for m in plain.modules() if isinstance(m, NormBase))


@pytest.mark.parametrize("item, pattern", [
    ("model.noise=[0.8]", r"model.noise must be \[Na, Nb\] or null"),
    ("model.virtual_batch_size=0", "model.virtual_batch_size must be >= 1 or null"),
])
def test_noise_and_virtual_batch_size_are_checked(item, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config("iebn_cifar_resnet164_tiny", [item])
