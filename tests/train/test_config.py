"""Config schema, YAML inheritance, ``--set`` overrides and validation of every value."""

from __future__ import annotations

import dataclasses
import re

import pytest
import yaml

from normlab.errors import ConfigError as BaseConfigError
from normlab.errors import NormlabError
from normlab.norms import list_norms
from normlab.norms.registry import norm_aliases, norm_options
from normlab.train import (
    ConfigError,
    apply_overrides,
    config_from_dict,
    find_config,
    list_configs,
    load_config,
    save_config,
)
from normlab.train.config import Config, ModelConfig, OptimConfig, TrainConfig

TINY = "iebn_cifar_resnet164_tiny"


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
            "model.kwargs.se_reduction=16",
            "train.epochs=3",
        ],
    )
    assert cfg.optim.lr == 0.05 and cfg.model.norm == "iebn"
    assert cfg.schedule.milestones == [2.0, 4.0]
    assert cfg.optim.grad_clip is None and cfg.optim.nesterov is True
    assert cfg.model.kwargs == {"se_reduction": 16}
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
            # built-in data, or (the tiny ImageNet recipes) a folder given at run time
            assert cfg.data.root is None, name
            tiny_data = {"imagenet": "imagefolder", "coco": "coco_sample"}
            kind = next((k for k in tiny_data if f"_{k}_" in name), None)
            assert cfg.data.name == tiny_data.get(kind, "digits"), name
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


def test_config_error_is_one_class_in_the_hierarchy():
    assert ConfigError is BaseConfigError
    assert issubclass(ConfigError, NormlabError) and issubclass(ConfigError, ValueError)


@pytest.mark.parametrize(("item", "pattern"), [
    ("train.epochs=0", "train.epochs must be >= 1, got 0"),
    ("train.epochs=-3", "train.epochs must be >= 1, got -3"),
    ("optim.lr=-1", "optim.lr must be > 0, got -1"),
    ("optim.lr=0", "optim.lr must be > 0, got 0"),
    ("train.label_smoothing=5", r"train.label_smoothing must be in \[0, 1\), got 5"),
    ("train.label_smoothing=1", r"train.label_smoothing must be in \[0, 1\)"),
    ("data.eval_batch_size=0", "data.eval_batch_size must be >= 1 or null, got 0"),
    ("data.batch_size=0", "data.batch_size must be >= 1, got 0"),
    ("optim.weight_decay=-1e-4", "optim.weight_decay must be >= 0"),
    ("optim.momentum=1", r"optim.momentum must be in \[0, 1\)"),
    ("optim.grad_clip=0", "optim.grad_clip must be > 0 or null"),
    ("optim.lr_reference_batch=0", "optim.lr_reference_batch must be >= 1 or null"),
    ("schedule.milestones=[3, 2]", "schedule.milestones must be increasing"),
    ("schedule.milestones=[-1]", "schedule.milestones must be increasing epochs >= 0"),
    ("schedule.warmup_epochs=-1", "schedule.warmup_epochs must be >= 0"),
    ("schedule.gamma=0", "schedule.gamma must be > 0"),
    ("schedule.min_factor=2", r"schedule.min_factor must be in \[0, 1\]"),
    ("train.num_threads=0", "train.num_threads must be >= 1 or null"),
    ("train.seed=-1", "train.seed must be >= 0"),
    ("model.num_classes=0", "model.num_classes must be >= 1 or null"),
    ("data.mix.secondary_per_k=-1", "data.mix.secondary_per_k must be >= 0"),
])
def test_ranges_are_checked_at_load_time(item, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(TINY, [item])


@pytest.mark.parametrize(("item", "pattern"), [
    ("train.amp=fp8", "train.amp must be 'none' or 'bf16', got 'fp8'"),
    ("schedule.name=step", "schedule.name must be 'multistep', 'cosine' or 'constant'"),
    ("optim.name=adam", "optim.name must be 'sgd', got 'adam'"),
    ("train.device=gpu", "train.device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    ("train.device=cuda:x", "train.device must be auto, cpu, cuda or cuda:N"),
    ("data.mix.normalize=mine", "data.mix.normalize must be 'primary' or 'own'"),
])
def test_closed_choices_name_the_valid_ones(item, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(TINY, [item])


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1"])
def test_every_device_pattern_is_accepted(device):
    assert load_config(TINY, [f"train.device={device}"]).train.device == device


@pytest.mark.parametrize(("item", "pattern"), [
    ("model.norm=ienb", r"model.norm: unknown norm 'ienb'; did you mean 'iebn'\?"),
    ("model.name=resnet2", r"model.name: unknown model 'resnet2'\. Did you mean .*'resnet20'"),
    ("data.name=cifar", r"data.name: unknown data set 'cifar'\. Did you mean 'cifar10'"),
    ("data.mix.dataset=mnst", r"data.mix.dataset: unknown data set 'mnst'\. Did you mean 'mnist'"),
    ("data.test_split=val", "data.test_split: data set 'digits' has no split 'val'"),
    ("model.kwargs.norm_downsample=bnn", "model.kwargs.norm_downsample: unknown norm 'bnn'"),
])
def test_names_are_checked_against_their_registries(item, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(TINY, [item])


@pytest.mark.parametrize("spelling", sorted(norm_aliases()))
def test_every_norm_name_and_alias_is_accepted(spelling):
    assert load_config(TINY, [f"model.norm={spelling}"]).model.norm == spelling


@pytest.mark.parametrize(("item", "pattern"), [
    ("model.kwargs.drop_rate=0.5",
     "model.kwargs.drop_rate: model 'resnet20' takes no option 'drop_rate'.*se_reduction"),
    ("model.kwargs.norm=bn", "model.kwargs.norm: set model.norm instead"),
    ("model.kwargs.num_classes=3", "model.kwargs.num_classes: set model.num_classes instead"),
    ("model.kwargs.norm_kwargs=3", "model.kwargs.norm_kwargs must be a mapping"),
    ("data.kwargs.colour=1", r"data.kwargs.colour: data set 'digits' takes no option 'colour'.*"
                             r"Valid options: style, textures, size, seed\."),
    ("data.mix.kwargs.noise=0.3", "data.mix.kwargs.noise: data set 'mnist' takes no option"),
    ("optim.param_groups.lr_scale=2", "Did you mean 'role_lr_scale'"),
    ("data.kwargs.size=abc", "config key 'data.kwargs.size' expects int, got 'abc'"),
    ("model.kwargs.widths=[4, 4]", r"'model.kwargs.widths' expects tuple\[int, int, int\]"),
    ("model.kwargs.last_gamma=1", "'model.kwargs.last_gamma' expects bool"),
    ("model.kwargs.se_reduction=abc", "'model.kwargs.se_reduction' expects .*int.*got 'abc'"),
    ("model.kwargs.norm_kwargs.eps=abc", "'model.kwargs.norm_kwargs.eps' expects float"),
])
def test_free_form_mappings_are_checked_against_what_they_configure(item, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(TINY, [item])


@pytest.mark.parametrize("norm", list_norms())
def test_norm_kwargs_are_checked_against_the_norms_constructor(norm):
    name, parameter = next(iter(norm_options(norm).items()))
    value = yaml.safe_dump(parameter.default).splitlines()[0]
    cfg = load_config(TINY, [f"model.norm={norm}", f"model.kwargs.norm_kwargs.{name}={value}"])
    assert cfg.model.kwargs["norm_kwargs"] == {name: parameter.default}
    with pytest.raises(ConfigError, match=f"norm {norm!r} has no option 'no_such_option'"):
        load_config(TINY, [f"model.norm={norm}", "model.kwargs.norm_kwargs.no_such_option=1"])


def test_python_callers_meet_the_same_checks(tmp_path):
    with pytest.raises(ConfigError, match="train.amp must be 'none' or 'bf16'"):
        TrainConfig(amp="fp8")
    with pytest.raises(ConfigError, match="did you mean 'iebn'"):
        Config(model=ModelConfig(norm="ienb"))
    with pytest.raises(ConfigError, match="optim.lr must be > 0"):
        OptimConfig(lr=-1)
    with pytest.raises(ConfigError, match="train.epochs must be >= 1"):
        dataclasses.replace(load_config(TINY).train, epochs=0)
    with pytest.raises(ConfigError, match="config key 'train.epochs' expects int"):
        TrainConfig(epochs="ten")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="config section 'model' must be a ModelConfig"):
        Config(model={"norm": "bn"})  # type: ignore[arg-type]
    assert Config() == config_from_dict({})


def test_yaml_files_meet_the_same_checks(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {amp: fp8}\n")
    with pytest.raises(ConfigError, match="train.amp must be 'none' or 'bf16'"):
        load_config(path)
    path.write_text("model: {norm: ienb}\n")
    with pytest.raises(ConfigError, match="did you mean 'iebn'"):
        load_config(path)


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["task=classification"],
         "data.name: 'coco_sample' is a detection data set but the config's task is "
         "'classification'; set task: detection"),
        (["data.name=digits", "data.loader=memory", "data.test_split=test", "data.kwargs={}"],
         "data.name: 'digits' is not a detection data set but the config's task is "
         "'detection'; choose a detection data set (normlab list datasets)"),
        (["model.name=resnet18", "model.kwargs={}"],
         "model.name: 'resnet18' is not a detection model but the config's task is "
         "'detection'; choose a detection model (normlab list models)"),
    ],
)
def test_detection_data_and_models_go_with_the_detection_task(items, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config("sn_coco_fasterrcnn_fpn_tiny", items)


def test_norm_options_of_a_model_are_checked_as_norm_names():
    config = load_config("sn_coco_maskrcnn_fpn_tiny", ["model.kwargs.fpn_norm=head",
                                                       "model.kwargs.mask_head_norm=gn"])
    assert config.model.kwargs["fpn_norm"] == "head"  # the head's norm (the default)
    with pytest.raises(ConfigError, match="model.kwargs.head_norm: unknown norm 'snn'; did "
                       "you mean 'sn'"):
        load_config("sn_coco_maskrcnn_fpn_tiny", ["model.kwargs.head_norm=snn"])
