"""The detectors (normlab.models.detection): torchvision's R-CNNs around normlab's ResNet.

Tiny settings throughout (ResNet-18, 64-96 px images, narrow heads, 7x7 C4 RoIs), so every
test builds and runs a real detector in well under a second.
"""

from __future__ import annotations

import sys

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler
from torchvision.ops import FrozenBatchNorm2d

from normlab.data.image_folder import IMAGENET_STATS
from normlab.errors import CheckpointError, ConfigError
from normlab.models import (
    create_model,
    detector_components,
    list_models,
    model_info,
    set_sample_seeds,
)
from normlab.models.detection_parts import SeededSampler
from normlab.models.registry import model_constructor
from normlab.norms import BatchNorm2d, GroupNorm2d, NormBase, SwitchNorm2d, is_frozen
from normlab.train.validation import keyword_parameters
from tests.models.helpers import on_meta

NAMES = ("fasterrcnn_c4_resnet50", "fasterrcnn_fpn_resnet50", "maskrcnn_fpn_resnet50")
TINY = {
    "backbone": "resnet18", "min_size": 96, "max_size": 128,
    "rpn_batch_size_per_image": 32, "box_batch_size_per_image": 16,
    "rpn_pre_nms_top_n_train": 200, "rpn_post_nms_top_n_train": 50,
    "rpn_pre_nms_top_n_test": 200, "rpn_post_nms_top_n_test": 20,
}
FPN = {"fpn_channels": 32, "representation_size": 64}
# C4's res5 head runs on every sampled RoI: 7x7 RoIs cost it a quarter of the default 14x14
EXTRA = {"fasterrcnn_c4_resnet50": {"roi_size": 7}, "fasterrcnn_fpn_resnet50": FPN,
         "maskrcnn_fpn_resnet50": {**FPN, "mask_convs": 2}}
LOSSES = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}


def tiny(name: str, **kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    options = {"num_classes": 4, **TINY, **EXTRA[name], **kwargs}
    return create_model(name, **options)


def box_mask(height: int, width: int, box: list[int]) -> torch.Tensor:
    mask = torch.zeros(height, width, dtype=torch.uint8)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = 1
    return mask


def sample(sizes: list[tuple[int, int]], seed: int = 0) -> tuple[list, list]:
    """Random images of ``sizes`` with two boxes each (boxes, labels, masks)."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for i, (h, w) in enumerate(sizes):
        images.append(torch.rand(3, h, w, generator=g))
        boxes = [[4 + i, 6, w // 2 + i, h // 2], [w // 3, h // 3, w - 3, h - 2 - i]]
        targets.append({
            "boxes": torch.tensor(boxes, dtype=torch.float32),
            "labels": torch.tensor([1 + i % 3, 3 - i % 3]),
            "masks": torch.stack([box_mask(h, w, b) for b in boxes]),
        })
    return images, targets


def norm_layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, NormBase)]


def test_registered_as_detection_family():
    assert set(list_models("detection")) == set(NAMES)
    for name in NAMES:
        info = model_info(name)
        assert (info["family"], info["num_classes"]) == ("detection", 91)


def test_config_options_come_from_the_signatures():
    c4 = keyword_parameters(model_constructor("fasterrcnn_c4_resnet50"))
    mask = keyword_parameters(model_constructor("maskrcnn_fpn_resnet50"))
    assert c4 is not None and mask is not None
    assert {"frozen_norm", "head_norm", "pretrained", "trainable_layers", "min_size"} <= set(c4)
    assert "fpn_channels" not in c4
    assert {"fpn_norm", "mask_head_norm", "mask_convs", "head_convs"} <= set(mask)


@pytest.mark.parametrize("name", NAMES)
def test_train_losses_and_eval_predictions(name):
    model = tiny(name, norm="sn")
    images, targets = sample([(64, 80), (80, 64)])
    model.train()
    set_sample_seeds(model, [3, 4])
    losses = model(images, targets)
    expected = LOSSES | ({"loss_mask"} if "mask" in name else set())
    assert set(losses) == expected
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.roi_heads.box_predictor.cls_score.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        predictions = model(images)
    for image, out in zip(images, predictions):
        h, w = image.shape[1:]
        count = out["boxes"].shape[0]
        assert out["labels"].shape == out["scores"].shape == (count,)
        # original image coordinates: the transform resized 64-80 px images to >= 96 px
        assert (out["boxes"][:, 2] <= w + 1e-4).all() and (out["boxes"][:, 3] <= h + 1e-4).all()
        if "mask" in name:
            assert out["masks"].shape == (count, 1, h, w)


TORCHVISION_TWINS = {
    "fasterrcnn_fpn_resnet50": torchvision.models.detection.fasterrcnn_resnet50_fpn,
    "maskrcnn_fpn_resnet50": torchvision.models.detection.maskrcnn_resnet50_fpn,
}


@pytest.mark.parametrize("name", TORCHVISION_TWINS)
def test_same_state_dict_layout_as_torchvision(name):
    with on_meta():
        ours = create_model(name, num_classes=91)
        theirs = TORCHVISION_TWINS[name](weights=None, weights_backbone=None, num_classes=91)
    shapes = {k: v.shape for k, v in ours.state_dict().items()}
    assert shapes == {k: v.shape for k, v in theirs.state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize("name", TORCHVISION_TWINS)
def test_torchvision_weights_give_torchvisions_losses_and_predictions(name):
    """With BN, no head norm and the same weights, our detector is torchvision's: same
    training losses (the unseeded sampler draws what torchvision's draws from the same
    global generator) and the same predictions."""
    options = {k: v for k, v in TINY.items() if k != "backbone"}
    options["box_detections_per_img"] = 20
    torch.manual_seed(0)
    theirs = TORCHVISION_TWINS[name](
        weights=None, weights_backbone=None, num_classes=4, **options
    )
    with on_meta():  # every tensor of ours is in the state dict: no initialization to waste
        ours = create_model(name, num_classes=4, **options)
    # copies: theirs runs first and moves its running statistics
    ours.load_state_dict({k: v.clone() for k, v in theirs.state_dict().items()}, assign=True)
    images, targets = sample([(80, 96), (96, 72)])
    results = []
    for model in (theirs, ours):
        model.train()
        torch.manual_seed(7)
        losses = model(images, targets)
        model.eval()
        with torch.no_grad():
            results.append((losses, model(images)))
    (losses, predictions), (our_losses, our_predictions) = results
    assert set(losses) == set(our_losses)
    for key, value in losses.items():
        torch.testing.assert_close(our_losses[key], value, rtol=2e-3, atol=1e-5)
    for theirs_out, ours_out in zip(predictions, our_predictions):
        assert torch.equal(ours_out["labels"], theirs_out["labels"])
        for key in set(theirs_out) - {"labels"}:
            torch.testing.assert_close(ours_out[key], theirs_out[key], rtol=1e-3, atol=1e-3)


@pytest.mark.slow
def test_frozen_norm_is_torchvisions_frozen_batch_norm():
    """BN† (``frozen_norm=True``) trains as torchvision's detectors with
    ``FrozenBatchNorm2d``: running statistics in training, no update."""
    detection = torchvision.models.detection
    options = {k: v for k, v in TINY.items() if k != "backbone"}
    torch.manual_seed(0)
    backbone = detection.backbone_utils.resnet_fpn_backbone(
        backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d, trainable_layers=5
    )
    for m in backbone.modules():
        if isinstance(m, FrozenBatchNorm2d):
            for buffer in (m.weight, m.bias, m.running_mean):
                buffer.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2)
    theirs = detection.FasterRCNN(backbone, num_classes=4, **options)
    ours = create_model("fasterrcnn_fpn_resnet50", num_classes=4, frozen_norm=True, **options)
    missing, unexpected = ours.load_state_dict(theirs.state_dict(), strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    images, targets = sample([(80, 96), (96, 72)])
    results = []
    for model in (theirs, ours):
        model.train()
        torch.manual_seed(7)
        results.append(model(images, targets))
    for key, value in results[0].items():
        torch.testing.assert_close(results[1][key], value, rtol=2e-3, atol=1e-5)
    torch.testing.assert_close(ours.backbone.body.bn1.running_mean, backbone.body.bn1.running_mean)


def test_transform_normalizes_with_imagenet_statistics():
    model = tiny("fasterrcnn_fpn_resnet50")
    assert tuple(model.transform.image_mean) == IMAGENET_STATS[0]
    assert tuple(model.transform.image_std) == IMAGENET_STATS[1]
    assert model.transform.min_size == (96,) and model.transform.max_size == 128


def test_norm_per_component():
    model = tiny("maskrcnn_fpn_resnet50", norm="sn", head_norm="gn", mask_head_norm=None)
    parts = detector_components(model)
    assert list(parts) == ["backbone", "fpn", "rpn", "box_head", "mask_head"]
    kinds = {k: {type(m) for m in norm_layers(v)} for k, v in parts.items()}
    assert kinds == {"backbone": {SwitchNorm2d}, "fpn": {GroupNorm2d}, "rpn": set(),
                     "box_head": {GroupNorm2d}, "mask_head": set()}
    assert len(norm_layers(parts["box_head"])) == 4  # 4conv1fc
    foreign = (nn.BatchNorm2d, nn.GroupNorm, FrozenBatchNorm2d)
    assert not [m for m in model.modules() if isinstance(m, foreign)]


def test_fpn_norm_and_head_norm_separately():
    model = tiny("fasterrcnn_fpn_resnet50", norm="gn", head_norm="sn", fpn_norm=None,
                 head_convs=2)
    parts = detector_components(model)
    assert not norm_layers(parts["fpn"])
    assert {type(m) for m in norm_layers(parts["box_head"])} == {SwitchNorm2d}
    assert len(norm_layers(parts["box_head"])) == 2


def test_without_head_norm_the_box_head_is_two_fc_layers():
    model = tiny("maskrcnn_fpn_resnet50", norm="bn")
    parts = detector_components(model)
    assert type(parts["box_head"]).__name__ == "TwoMLPHead"
    assert not norm_layers(parts["fpn"]) and not norm_layers(parts["mask_head"])


def test_c4_components_and_res5_head_normalized_like_the_backbone():
    # without tiny()'s 7x7 RoIs: the default RoI size is Detectron's 14
    model = create_model("fasterrcnn_c4_resnet50", num_classes=4, **TINY, norm="gn")
    parts = detector_components(model)
    assert list(parts) == ["backbone", "rpn", "box_head"]
    assert {type(m) for m in norm_layers(parts["box_head"])} == {GroupNorm2d}
    assert model.backbone.out_channels == 256 and parts["box_head"].out_channels == 512
    assert model.roi_heads.box_roi_pool.output_size == (14, 14)
    small = tiny("fasterrcnn_c4_resnet50", roi_size=6)
    assert small.roi_heads.box_roi_pool.output_size == (6, 6)


@pytest.mark.parametrize("name", ["fasterrcnn_c4_resnet50", "maskrcnn_fpn_resnet50"])
def test_frozen_backbone_stays_frozen_after_train_and_a_step(name):
    model = tiny(name, norm="bn", frozen_norm=True, **({} if "c4" in name else {"head_norm": "gn"}))
    backbone_norms = norm_layers(model.backbone) + norm_layers(model.roi_heads.box_head)
    backbone_norms = [m for m in backbone_norms if isinstance(m, BatchNorm2d)]
    assert backbone_norms and all(is_frozen(m) for m in backbone_norms)
    before = {id(m): {k: v.clone() for k, v in m.state_dict().items()} for m in backbone_norms}
    weights = model.backbone.body.layer4 if "fpn" in name else model.roi_heads.box_head.layer4
    conv_before = weights[0].conv1.weight.clone()
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    images, targets = sample([(64, 64), (64, 64)])
    set_sample_seeds(model, [0, 1])
    sum(model(images, targets).values()).backward()
    optimizer.step()
    for m in backbone_norms:
        assert is_frozen(m) and not m.weight.requires_grad
        for key, value in m.state_dict().items():
            torch.testing.assert_close(value, before[id(m)][key], rtol=0, atol=0)
    assert not torch.equal(weights[0].conv1.weight, conv_before)


def test_trainable_layers_freeze_the_first_stages_whole(tmp_path):
    path = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    model = tiny("fasterrcnn_fpn_resnet50", norm="bn", pretrained=str(path))  # default 3
    body = model.backbone.body
    for frozen in (body.conv1, body.bn1, body.layer1):
        assert not any(p.requires_grad for p in frozen.parameters())
    assert all(is_frozen(m) for m in norm_layers(body.layer1)) and is_frozen(body.bn1)
    for trained in (body.layer2, body.layer4):
        assert all(p.requires_grad for p in trained.parameters())
        assert not any(is_frozen(m) for m in norm_layers(trained))
    scratch = tiny("fasterrcnn_fpn_resnet50", norm="bn")  # default 5: everything trains
    assert all(p.requires_grad for p in scratch.parameters())
    none = tiny("fasterrcnn_c4_resnet50", norm="bn", trainable_layers=0)
    assert not any(p.requires_grad for p in none.backbone.parameters())
    assert not any(p.requires_grad for p in none.roi_heads.box_head.parameters())


@pytest.mark.parametrize("name", ["fasterrcnn_c4_resnet50", "fasterrcnn_fpn_resnet50"])
def test_pretrained_torchvision_state_dict_loads_exactly(tmp_path, name):
    torch.manual_seed(1)
    reference = torchvision.models.resnet18()
    for m in reference.modules():  # non-default statistics, so a missed buffer shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = tiny(name, norm="bn", pretrained=str(path), trainable_layers=5)
    if "fpn" in name:
        loaded = model.backbone.body.state_dict()
    else:
        loaded = {**model.backbone.state_dict(),
                  **{k: v for k, v in model.roi_heads.box_head.state_dict().items()}}
    expected = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    assert set(loaded) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)


def test_pretrained_from_a_normlab_checkpoint(tmp_path):
    classifier = create_model("resnet18", num_classes=10, norm="sn")
    with torch.no_grad():
        classifier.layer3[0].bn1.mean_weight.copy_(torch.tensor([0.1, 0.2, 0.3]))
    path = tmp_path / "last.pt"
    torch.save({"epoch": 3, "model": classifier.state_dict()}, path)
    model = tiny("fasterrcnn_fpn_resnet50", norm="sn", pretrained=str(path))
    torch.testing.assert_close(
        model.backbone.body.layer3[0].bn1.mean_weight, torch.tensor([0.1, 0.2, 0.3])
    )


def test_pretrained_mismatch_is_one_line(tmp_path):
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    with pytest.raises(CheckpointError, match=r"unexpected keys \d+ \(layer1.2") as info:
        tiny("fasterrcnn_fpn_resnet50", pretrained=str(path))
    assert "\n" not in str(info.value) and "resnet18 with norm 'bn'" in str(info.value)
    bn = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), bn)
    with pytest.raises(CheckpointError, match=r"missing keys \d+ \(bn1.mean_weight"):
        tiny("fasterrcnn_fpn_resnet50", norm="sn", pretrained=str(bn))
    with pytest.raises(CheckpointError, match="not found"):
        tiny("fasterrcnn_fpn_resnet50", pretrained=str(tmp_path / "absent.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        tiny("fasterrcnn_fpn_resnet50", pretrained=str(tmp_path / "junk.pth"))


def test_c4_refuses_head_norm():
    with pytest.raises(ConfigError, match="head_norm is not an option of the C4 detector"):
        tiny("fasterrcnn_c4_resnet50", head_norm="gn")


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("fasterrcnn_c4_resnet50", {"fpn_channels": 64}, "has no option 'fpn_channels'"),
        ("fasterrcnn_fpn_resnet50", {"mask_convs": 2}, "has no option 'mask_convs'"),
        ("maskrcnn_fpn_resnet50", {"roi_size": 7}, "has no option 'roi_size'"),
        ("fasterrcnn_fpn_resnet50", {"head_convs": 2}, "head_convs sets the 4conv1fc"),
        ("fasterrcnn_fpn_resnet50", {"head_norm": "gm"}, "head_norm: unknown norm 'gm'"),
        ("fasterrcnn_fpn_resnet50", {"head_norm": "gn", "norm_kwargs": {"momentum": 0.2}},
         "head_norm: .*no option 'momentum'"),
        ("fasterrcnn_fpn_resnet50", {"trainable_layers": 6}, "trainable_layers must be"),
        ("fasterrcnn_fpn_resnet50", {"box_positive_fraction": 0}, r"in \(0, 1\]"),
        ("fasterrcnn_fpn_resnet50", {"min_size": 200}, "exceeds max_size"),
        ("fasterrcnn_fpn_resnet50", {"backbone": "resnet50v2"}, "not a v1 ResNet"),
        ("fasterrcnn_fpn_resnet50", {"backbone": "vgg19"}, "not a registered ImageNet"),
        ("maskrcnn_fpn_resnet50", {"in_chans": 1}, "in_chans must be 3"),
        ("maskrcnn_fpn_resnet50", {"num_classes": 1}, "num_classes counts the background"),
        ("fasterrcnn_c4_resnet50", {"norm": "sm"}, "norm: unknown norm 'sm'"),
        ("fasterrcnn_c4_resnet50", {"norm": "gn", "norm_kwargs": {"momentum": 0.1}},
         "norm: .*no option 'momentum'"),
    ],
)
def test_bad_options_raise_one_line_config_errors(name, options, match):
    with pytest.raises(ConfigError, match=match) as info:
        tiny(name, **options)
    assert "\n" not in str(info.value)


def matches(seed: int, count: int) -> torch.Tensor:
    """A matched-index vector: -1 ignored, 0 negative, >= 1 positive."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-1, 4, (count,), generator=g)


def test_sampler_without_seeds_is_torchvisions():
    matched = [matches(0, 500), matches(1, 300)]
    torch.manual_seed(5)
    ours = SeededSampler(64, 0.25, stage=0)(matched)
    torch.manual_seed(5)
    theirs = BalancedPositiveNegativeSampler(64, 0.25)(matched)
    for a, b in zip(ours, theirs):
        for x, y in zip(a, b):
            assert torch.equal(x, y)


def test_seeded_sampler_is_per_image_not_per_position():
    sampler = SeededSampler(32, 0.5, stage=1)
    matched = [matches(i, 200 + 50 * i) for i in range(3)]
    sampler.seeds = (11, 22, 33)
    pos, neg = sampler(matched)
    sampler.seeds = (33, 11, 22)
    pos2, neg2 = sampler([matched[2], matched[0], matched[1]])
    for i, j in ((0, 1), (1, 2), (2, 0)):
        assert torch.equal(pos[i], pos2[j]) and torch.equal(neg[i], neg2[j])
    assert int(pos[0].sum()) == 16 and int(neg[0].sum()) == 16
    assert bool((matched[0][pos[0].bool()] >= 1).all())
    assert bool((matched[0][neg[0].bool()] == 0).all())
    sampler.seeds = (12, 22, 33)
    assert not torch.equal(sampler(matched)[0][0], pos[0])
    other_stage = SeededSampler(32, 0.5, stage=0)
    other_stage.seeds = (11, 22, 33)
    assert not torch.equal(other_stage(matched)[0][0], pos[0])


def test_seeded_sampler_checks_the_seed_count():
    sampler = SeededSampler(8, 0.5, stage=0)
    sampler.seeds = (1,)
    with pytest.raises(ValueError, match="1 seeds for a batch of 2"):
        sampler([matches(0, 10), matches(1, 10)])


class RecordingSampler(SeededSampler):
    """Keeps each call's masks (per image) for the test."""

    def __init__(self, base: SeededSampler) -> None:
        super().__init__(base.batch_size_per_image, base.positive_fraction, base.stage)
        self.calls: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []

    def __call__(self, matched_idxs):
        result = super().__call__(matched_idxs)
        self.calls.append(result)
        return result


def test_set_sample_seeds_makes_samples_independent_of_batch_order():
    model = tiny("maskrcnn_fpn_resnet50", norm="gn", head_norm="gn", head_convs=1)
    model.train()
    recorders = {}
    for part in ("rpn", "roi_heads"):
        module = getattr(model, part)
        module.fg_bg_sampler = recorders[part] = RecordingSampler(module.fg_bg_sampler)
    images, targets = sample([(72, 72)] * 3, seed=4)
    order = [2, 0, 1]
    set_sample_seeds(model, [100, 200, 300])
    model(images, targets)
    set_sample_seeds(model, [[100, 200, 300][i] for i in order])
    model([images[i] for i in order], [targets[i] for i in order])
    for recorder in recorders.values():
        (pos, neg), (pos2, neg2) = recorder.calls
        for k, i in enumerate(order):
            assert torch.equal(pos[i], pos2[k]) and torch.equal(neg[i], neg2[k])
    set_sample_seeds(model, None)
    assert recorders["rpn"].seeds is None and recorders["roi_heads"].seeds is None


def test_set_sample_seeds_needs_a_seeded_detector():
    with pytest.raises(TypeError, match="no seeded sampler"):
        set_sample_seeds(nn.Linear(2, 2), [1])
    with pytest.raises(TypeError, match="must be ints"):
        set_sample_seeds(tiny("fasterrcnn_c4_resnet50"), [1.5])


def test_a_missing_torchvision_says_which_extra_installs_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision.models.detection", None)
    with pytest.raises(ImportError, match=r"the detection models need torchvision; install it "
                       r"with `pip install normlab\[vision\]`"):
        create_model("fasterrcnn_fpn_resnet50", num_classes=3)
