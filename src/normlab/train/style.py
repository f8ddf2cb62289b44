"""Fast style transfer (Johnson et al. 2016): perceptual losses and the training loop.

A :class:`~normlab.models.TransformerNet` with a chosen norm learns to restyle content
images in one pass. Its loss, from a fixed VGG-16 (:class:`~normlab.models.VGG16Features`),
is

    L = w_c * ||phi_j(y) - phi_j(x)||^2 / (C_j H_j W_j)              (content, layer j)
      + w_s * sum_l ||G_l(y) - G_l(s)||_F^2                            (style, layers l)
      + w_tv * TV(y)

with the Gram matrix ``G_l(y)[c, c'] = sum_hw phi_l(y)[c, hw] phi_l(y)[c', hw] / (C_l H_l W_l)``
of the output ``y``, the content image ``x`` and the style image ``s``. This is the setting
of the IEBN paper's Figs. 2, 3 and 5 (BN, IN, SE, IEBN), the SN paper's stylization figures
(IN, BN, SN) and BIN's style-transfer experiment (IN, BIN).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from normlab.models import VGG16Features

__all__ = ["PerceptualLoss", "gram_matrix", "imagenet_normalize", "train_style_network"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalize(x: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] to the input range of an ImageNet-trained VGG."""
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W) -> (N, C, C)`` Gram matrices divided by ``C * H * W``."""
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w)
    return flat @ flat.transpose(1, 2) / (c * h * w)


class PerceptualLoss(nn.Module):
    """Content, style and total-variation losses of Johnson et al. against one style image.

    Args:
        vgg: The loss network (frozen here); its ``layers`` must include the content and
            style layers.
        style: The style image, ``(1, 3, H, W)`` in [0, 1].
        content_layer: VGG layer of the content loss (``relu2_2``, as Johnson et al.).
        style_layers: VGG layers of the style loss.
        content_weight, style_weight, tv_weight: The weights ``w_c``, ``w_s``, ``w_tv``.
    """

    def __init__(
        self,
        vgg: VGG16Features,
        style: torch.Tensor,
        *,
        content_layer: str = "relu2_2",
        style_layers: Sequence[str] = ("relu1_2", "relu2_2", "relu3_3", "relu4_3"),
        content_weight: float = 1.0,
        style_weight: float = 1e5,
        tv_weight: float = 1e-6,
    ) -> None:
        super().__init__()
        missing = {content_layer, *style_layers} - set(vgg.layers)
        if missing:
            raise ValueError(f"the VGG computes {vgg.layers}; add {sorted(missing)}")
        self.vgg = vgg.eval().requires_grad_(False)
        self.content_layer = content_layer
        self.style_layers = tuple(style_layers)
        self.weights = (float(content_weight), float(style_weight), float(tv_weight))
        with torch.no_grad():
            targets = self.vgg(imagenet_normalize(style))
        for name in self.style_layers:
            self.register_buffer(f"gram_{name}", gram_matrix(targets[name]))

    def train(self, mode: bool = True) -> PerceptualLoss:
        """The loss network stays in eval mode."""
        super().train(mode)
        self.vgg.eval()
        return self

    def forward(self, output: torch.Tensor, content: torch.Tensor) -> dict[str, torch.Tensor]:
        """``content``, ``style``, ``tv`` (unweighted) and ``total`` (weighted) losses."""
        mine = self.vgg(imagenet_normalize(output))
        with torch.no_grad():
            target = self.vgg(imagenet_normalize(content))[self.content_layer]
        content_loss = torch.mean((mine[self.content_layer] - target) ** 2)
        style_loss = sum(
            ((gram_matrix(mine[name]) - getattr(self, f"gram_{name}")) ** 2).sum((1, 2)).mean()
            for name in self.style_layers
        )
        tv = (output[..., 1:, :] - output[..., :-1, :]).abs().mean() + (
            output[..., :, 1:] - output[..., :, :-1]
        ).abs().mean()
        w_c, w_s, w_tv = self.weights
        return {
            "content": content_loss,
            "style": style_loss,
            "tv": tv,
            "total": w_c * content_loss + w_s * style_loss + w_tv * tv,
        }


def train_style_network(
    model: nn.Module,
    batches: Iterator[torch.Tensor],
    loss: PerceptualLoss,
    *,
    steps: int,
    lr: float = 1e-3,
    post_step: Callable[[nn.Module], None] | None = None,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` with Adam for ``steps`` batches of content images in [0, 1].

    Args:
        model: The transformation network (trained in place).
        batches: Content batches ``(N, 3, H, W)``, at least ``steps`` of them.
        loss: The perceptual loss.
        steps: Number of updates.
        lr: Adam's learning rate (Johnson et al.: 1e-3).
        post_step: Called after every update (e.g. :func:`normlab.post_step` for BIN).
        progress: Called with ``(step, losses)`` after every update.

    Returns:
        One record per step: ``step``, ``content``, ``style``, ``tv``, ``total``.

    Raises:
        FloatingPointError: The loss became NaN or infinite.
        ValueError: ``batches`` ran out before ``steps``.
    """
    import normlab

    optimizer = torch.optim.Adam(normlab.param_groups(model, lr, 0.0), lr=lr)
    model.train()
    history = []
    for step in range(1, steps + 1):
        content = next(batches, None)
        if content is None:
            raise ValueError(f"the content batches ran out after {step - 1} of {steps} steps")
        losses = loss(model(content), content)
        if not torch.isfinite(losses["total"]):
            raise FloatingPointError(f"style-transfer loss became {losses['total'].item()} "
                                     f"at step {step}")
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        optimizer.step()
        if post_step is not None:
            post_step(model)
        record = {"step": step, **{k: float(v.detach()) for k, v in losses.items()}}
        history.append(record)
        if progress is not None:
            progress(step, record)
    return history
