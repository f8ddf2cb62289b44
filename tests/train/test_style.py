"""Style-transfer losses and training loop (Johnson et al.), and the photo readers."""

from __future__ import annotations

import pytest
import torch

import normlab
from normlab.data import DatasetError
from normlab.data.photos import content_batches, load_photo, random_crops
from normlab.models import VGG16Features, create_model
from normlab.tasks.style_transfer import PerceptualLoss, gram_matrix, train_style_network
from normlab.train import NonFiniteLossError

LAYERS = ("relu1_2", "relu2_2")


def _loss(style: torch.Tensor, **kw) -> PerceptualLoss:
    torch.manual_seed(0)
    return PerceptualLoss(VGG16Features(layers=LAYERS), style, style_layers=LAYERS, **kw)


def test_gram_matrix_is_the_normalized_channel_correlation():
    f = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    expected = torch.einsum("nchw,ndhw->ncd", f, f) / (3 * 4 * 5)
    torch.testing.assert_close(gram_matrix(f), expected)


def test_losses_vanish_at_their_targets_and_the_vgg_stays_frozen():
    style = torch.rand(1, 3, 16, 16)
    loss = _loss(style)
    own = loss(style, style)
    assert own["content"].item() == 0.0 and own["style"].item() < 1e-10
    other = loss(torch.rand(1, 3, 16, 16), style)
    assert other["content"] > 0 and other["style"] > 0 and other["tv"] > 0
    torch.testing.assert_close(
        other["total"], other["content"] + 1e5 * other["style"] + 1e-6 * other["tv"]
    )
    loss.train()
    assert not loss.vgg.training
    assert not any(p.requires_grad for p in loss.vgg.parameters())
    with pytest.raises(ValueError, match=r"add \['relu3_3'\]"):
        PerceptualLoss(VGG16Features(layers=LAYERS), style, style_layers=("relu3_3",))


PHOTO = torch.rand(3, 40, 30, generator=torch.Generator().manual_seed(0))


def _batches(n=2, size=16, seed=0):
    return content_batches([PHOTO], n, size, seed)


def test_training_records_every_step_and_keeps_bin_gates_in_range():
    torch.manual_seed(0)
    model = create_model("transformer_net", norm="bin", num_residual=1)
    history = train_style_network(model, _batches(), _loss(torch.rand(1, 3, 16, 16)),
                                  steps=3, lr=0.5, post_step=normlab.post_step)
    assert [r["step"] for r in history] == [1, 2, 3]
    assert set(history[0]) == {"step", "content", "style", "tv", "total"}
    gates = torch.cat([m.gate for m in model.modules() if hasattr(m, "gate")])
    assert gates.min() >= 0 and gates.max() <= 1


def test_training_stops_on_a_non_finite_loss_and_on_too_few_batches():
    model = create_model("transformer_net", norm="in", num_residual=1)
    loss = _loss(torch.rand(1, 3, 16, 16))
    with pytest.raises(NonFiniteLossError, match="loss became nan at epoch 1, step 1/1"):
        train_style_network(model, iter([torch.full((1, 3, 16, 16), float("nan"))]), loss,
                            steps=1)
    with pytest.raises(ValueError, match="ran out after 1 of 2 steps"):
        train_style_network(model, iter([torch.rand(1, 3, 16, 16)]), loss, steps=2)


def test_photos_from_files_and_samples(tmp_path):
    from PIL import Image

    grey = (torch.arange(20 * 10) % 256).to(torch.uint8).reshape(20, 10)
    Image.fromarray(grey.numpy(), mode="L").save(tmp_path / "grey.png")
    photo = load_photo(tmp_path / "grey.png")
    assert photo.shape == (3, 20, 10) and photo.max() <= 1
    torch.testing.assert_close(photo[0], grey.float() / 255)
    assert load_photo("astronaut").shape == (3, 512, 512)
    with pytest.raises(DatasetError, match="is neither an image file nor a scikit-image sample"):
        load_photo(tmp_path / "missing.png")
    crops = random_crops([photo], 4, 8, torch.Generator().manual_seed(1))
    again = random_crops([photo], 4, 8, torch.Generator().manual_seed(1))
    assert crops.shape == (4, 3, 8, 8) and torch.equal(crops, again)
    assert torch.equal(next(_batches(seed=3)), next(_batches(seed=3)))
    assert not torch.equal(next(_batches(seed=3)), next(_batches(seed=4)))
