"""Registry: names, metadata, unknown names."""

import json

import pytest

from normlab.models import create_model, list_models, model_info

CIFAR = {
    "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet164",
    "preresnet110", "preresnet164", "densenet100_12", "resnext29_8x64d", "wrn28_10",
    "vgg19", "alexnet",
}
IMAGENET = {
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
    "resnet50v2", "resnet101v2",
}
STYLE = {"transformer_net", "vgg16_features"}
DETECTION = {"fasterrcnn_c4_resnet50", "fasterrcnn_fpn_resnet50", "maskrcnn_fpn_resnet50"}


def test_every_issue_model_is_registered_in_its_family():
    assert set(list_models("cifar")) == CIFAR
    assert set(list_models("imagenet")) == IMAGENET
    assert set(list_models("style")) == STYLE
    assert set(list_models("detection")) == DETECTION
    assert list_models() == sorted(CIFAR | IMAGENET | STYLE | DETECTION)


@pytest.mark.parametrize("name", sorted(CIFAR | IMAGENET | STYLE | DETECTION))
def test_metadata_is_printable_and_consistent(name):
    info = model_info(name)
    json.dumps(info)
    assert info["name"] == name and info["summary"]
    size = {"cifar": (3, 32, 32), "imagenet": (3, 224, 224), "style": (3, 256, 256),
            "detection": (3, 800, 800)}
    assert tuple(info["input_size"]) == size[info["family"]]
    classes = {"cifar": 10, "imagenet": 1000, "style": None, "detection": 91}
    assert info["num_classes"] == classes[info["family"]]


def test_table1_models_say_so():
    for name in ("resnet164", "preresnet164", "densenet100_12", "resnext29_8x64d",
                 "resnet34", "resnet50", "resnet152", "resnext50_32x4d"):
        assert "IEBN Table 1" in model_info(name)["tables"]


@pytest.mark.parametrize("call", [create_model, model_info])
def test_unknown_name_lists_valid_names(call):
    with pytest.raises(ValueError, match="unknown model 'resnet1000'.*resnet164.*wrn28_10"):
        call("resnet1000")


def test_create_model_forwards_kwargs():
    model = create_model("resnet20", num_classes=7, in_chans=1)
    assert model.fc.out_features == 7 and model.conv1.in_channels == 1
    with pytest.raises(TypeError):
        create_model("resnet20", not_an_option=1)
