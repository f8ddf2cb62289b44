"""VGG-16 loss network (torchvision names, loading from a local file) and the style net."""

from __future__ import annotations

import pytest
import torch

from normlab.models import VGG16Features, create_model, load_vgg16_features

# torchvision vgg16 "D": conv channels with "M" = max pool; Sequential index rules:
# each conv is followed by a ReLU, each "M" is one module.
CFG_D = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def torchvision_vgg16_feature_shapes() -> dict[str, tuple[int, ...]]:
    shapes, index, in_ch = {}, 0, 3
    for v in CFG_D:
        if v == "M":
            index += 1
            continue
        shapes[f"features.{index}.weight"] = (v, in_ch, 3, 3)
        shapes[f"features.{index}.bias"] = (v,)
        index, in_ch = index + 2, v
    return shapes


@pytest.fixture(scope="module")
def vgg_state() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {k: torch.randn(s, generator=gen) * 0.01
            for k, s in torchvision_vgg16_feature_shapes().items()}


def test_names_and_shapes_match_torchvision_vgg16_features():
    with torch.device("meta"):
        model = VGG16Features()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == torchvision_vgg16_feature_shapes()
    assert len(shapes) == 26


def test_loads_full_vgg16_file_and_drops_classifier(tmp_path, vgg_state):
    path = tmp_path / "vgg16.pth"
    torch.save({**vgg_state, "classifier.6.weight": torch.zeros(3, 4)}, path)
    model = create_model("vgg16_features", weights=path, layers=("relu2_2", "relu4_3"))
    for key, value in vgg_state.items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    out = model(x)
    assert list(out) == ["relu2_2", "relu4_3"]
    assert out["relu2_2"].shape == (1, 128, 32, 32) and out["relu4_3"].shape == (1, 512, 8, 8)
    sum(o.square().mean() for o in out.values()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_loads_features_only_file(tmp_path, vgg_state):
    path = tmp_path / "features.pth"
    torch.save({k.removeprefix("features."): v for k, v in vgg_state.items()}, path)
    state = load_vgg16_features(path)
    assert state.keys() == vgg_state.keys()
    torch.testing.assert_close(state["features.28.bias"], vgg_state["features.28.bias"])


def test_missing_file_says_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pth.*vgg16-397923af"):
        VGG16Features(weights=tmp_path / "nothere.pth")


def test_mismatched_keys_and_shapes_are_named(tmp_path, vgg_state):
    broken = dict(vgg_state)
    del broken["features.0.bias"]
    broken["features.2.weight"] = torch.zeros(64, 64, 5, 5)
    broken["features.1.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(broken, path)
    with pytest.raises(ValueError) as err:
        load_vgg16_features(path)
    message = str(err.value)
    assert "features.0.bias" in message and "features.1.weight" in message
    assert "features.2.weight: file (64, 64, 5, 5) vs VGG-16 (64, 64, 3, 3)" in message


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match="state dict"):
        load_vgg16_features(path)


def test_unknown_layer_name():
    with pytest.raises(ValueError, match="relu9_9"):
        VGG16Features(layers=("relu9_9",))


def test_style_network_layout_and_se():
    model = create_model("transformer_net", norm="bn", se_reduction=16)
    assert len(model.res) == 5 and all(block.se is not None for block in model.res)
    assert create_model("transformer_net").down[1].__class__.__name__ == "InstanceNorm2d"
    x = torch.randn(2, 3, 36, 36)
    with pytest.raises(ValueError, match="divisible by 4"):
        model(x[:, :, :34, :36])
    assert model(x).shape == x.shape
