"""Transform presets on known inputs: sizes, crop scale range, hand-computed evaluation
crop, flips, PCA lighting formula, seeding."""

import pickle

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from normlab.data.presets import (
    IMAGENET_PCA_EIGENVALUES,
    IMAGENET_PCA_EIGENVECTORS,
    Lighting,
    eval_resize,
    list_transform_presets,
    register_transform_preset,
    transform_preset,
)

RANDOM = ("imagenet_train", "imagenet_train_lighting", "imagenet_train_color", "cifar_train")


def _image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator)


def test_every_preset_gives_uint8_images_of_the_size_and_pickles():
    assert set(list_transform_presets()) >= {
        "imagenet_train", "imagenet_train_color", "imagenet_eval", "cifar_train", "eval_center",
        "none",
    }
    for name in list_transform_presets():
        for h, w in ((375, 500), (500, 333), (40, 40)):
            transform = transform_preset(name, size=40)
            image = _image(40, 40) if name == "none" else _image(h, w)
            out = transform(image)
            assert out.dtype == torch.uint8 and out.shape == (3, 40, 40), (name, h, w)
        assert pickle.loads(pickle.dumps(transform)).min_size == transform.min_size


def test_decode_size_hints():
    assert transform_preset("imagenet_train", size=224).min_size == 224
    assert transform_preset("imagenet_eval", size=224).min_size == 256
    assert transform_preset("cifar_train", size=32).min_size is None
    assert eval_resize(224) == 256 and eval_resize(112) == 128


def test_random_resized_crop_covers_the_paper_scale_range_and_is_what_the_output_shows():
    transform = transform_preset("imagenet_train", size=64)
    crop = transform[0]
    image = _image(120, 160)
    fractions, ratios = [], []
    for seed in range(300):
        torch.manual_seed(seed)
        params = crop.make_params([image])
        fractions.append(params["height"] * params["width"] / (120 * 160))
        ratios.append(params["width"] / params["height"])
        torch.manual_seed(seed)
        out = transform(image)
        expected = TF.resized_crop(
            image, params["top"], params["left"], params["height"], params["width"], [64, 64],
            antialias=True,
        )
        assert torch.equal(out, expected) or torch.equal(out, expected.flip(-1))
    assert 0.08 - 0.01 <= min(fractions) < 0.2 and 0.8 < max(fractions) <= 1.0
    assert min(ratios) >= 3 / 4 - 0.05 and max(ratios) <= 4 / 3 + 0.05


def test_eval_crop_equals_resize_256_then_centre_224_by_hand():
    image = _image(300, 420)
    out = transform_preset("imagenet_eval", size=224)(image)
    # shorter side 300 -> 256, longer 420 -> int(420 * 256 / 300) = 358; centre 224 crop
    resized = F.interpolate(
        image[None].float(), size=(256, 358), mode="bilinear", align_corners=False,
        antialias=True,
    )[0].round().clamp(0, 255)
    expected = resized[:, 16:240, 67:291]
    assert out.shape == (3, 224, 224)
    assert (out.float() - expected).abs().max() <= 1


def test_cifar_train_is_a_padded_crop_possibly_flipped():
    image = _image(32, 32)
    padded = F.pad(image, (4, 4, 4, 4))
    crops = [padded[:, r : r + 32, c : c + 32] for r in range(9) for c in range(9)]
    transform = transform_preset("cifar_train", size=32)
    flipped = 0
    for seed in range(60):
        torch.manual_seed(seed)
        out = transform(image)
        plain = any(torch.equal(out, c) for c in crops)
        mirrored = any(torch.equal(out, c.flip(-1)) for c in crops)
        assert plain or mirrored
        flipped += mirrored and not plain
    assert 10 < flipped < 50


def test_imagenet_train_flips_a_whole_image_crop():
    image = _image(64, 64)
    transform = transform_preset("imagenet_train", size=64)
    transform[0].scale = (1.0, 1.0)
    transform[0].ratio = (1.0, 1.0)
    outs = []
    for seed in range(20):
        torch.manual_seed(seed)
        outs.append(transform(image))
    assert all(torch.equal(o, image) or torch.equal(o, image.flip(-1)) for o in outs)
    assert any(torch.equal(o, image) for o in outs)
    assert any(torch.equal(o, image.flip(-1)) for o in outs)


def test_lighting_on_a_constant_image_adds_the_pca_offset():
    image = torch.full((3, 5, 7), 128, dtype=torch.uint8)
    torch.manual_seed(3)
    out = Lighting(0.1)(image)
    torch.manual_seed(3)
    alpha = torch.randn(3) * 0.1
    vectors = torch.tensor(IMAGENET_PCA_EIGENVECTORS)
    values = torch.tensor(IMAGENET_PCA_EIGENVALUES)
    offset = [sum(vectors[c, j] * alpha[j] * values[j] for j in range(3)) for c in range(3)]
    for c in range(3):
        expected = min(255, max(0, round(128 + 255 * float(offset[c]))))
        assert torch.all(out[c] == expected), c
    assert not torch.equal(out, image)


def test_lighting_refuses_a_float_image():
    with pytest.raises(ValueError, match="uint8 RGB"):
        Lighting()(torch.zeros(3, 2, 2))


def test_colour_preset_applies_jitter_and_lighting_after_the_crop():
    names = [type(t).__name__ for t in transform_preset("imagenet_train_color", size=8)]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "ColorJitter", "Lighting"]
    jitter = transform_preset("imagenet_train_color", size=8)[2]
    assert jitter.brightness == jitter.contrast == jitter.saturation == (0.6, 1.4)
    assert jitter.hue is None


@pytest.mark.parametrize("name", RANDOM)
def test_presets_are_deterministic_under_manual_seed(name):
    transform = transform_preset(name, size=48)
    image = _image(90, 120)
    torch.manual_seed(7)
    first = transform(image)
    torch.manual_seed(7)
    assert torch.equal(transform(image), first)
    others = []
    for seed in range(8, 12):
        torch.manual_seed(seed)
        others.append(transform(image))
    assert any(not torch.equal(o, first) for o in others)


def test_unknown_names_sizes_and_duplicates_are_refused():
    with pytest.raises(ValueError, match="unknown transform preset 'imagenet'.*imagenet_eval"):
        transform_preset("imagenet", size=224)
    with pytest.raises(ValueError, match="size must be >= 1"):
        transform_preset("imagenet_train", size=0)
    with pytest.raises(ValueError, match="already registered"):
        register_transform_preset("imagenet_train")(lambda size: v2.Identity())
