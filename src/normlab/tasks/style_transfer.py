"""Fast style transfer (Johnson et al. 2016) as a task on the engine: perceptual losses.

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

:class:`StyleTransferTask` plugs the loss into the engine's loop
(:class:`~normlab.train.engine.Trainer`), so style training gets the same NaN stop
(:class:`~normlab.train.errors.NonFiniteLossError`), progress bar, AMP and gradient
clipping as every other task. Its batches are content images ``(N, 3, H, W)`` in [0, 1];
:func:`train_style_network` is the Adam recipe of Johnson et al. on it. It is trained by
``normlab style`` (:mod:`normlab.experiments.style_transfer`), not from a run config.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from normlab.models import VGG16Features
from normlab.norms import param_groups
from normlab.train.engine import StepInfo, Trainer
from normlab.train.errors import CheckpointError
from normlab.train.factory import Loaders
from normlab.train.schedule import LRSchedule
from normlab.train.task import Forward, StepResult, SumMetric, Task, register_task

__all__ = [
    "ContentBatches",
    "PerceptualLoss",
    "StyleLosses",
    "StyleTransferTask",
    "gram_matrix",
    "imagenet_normalize",
    "loss_network",
    "train_style_network",
]

TERMS = ("content", "style", "tv", "total")

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


def loss_network(weights: str | Path | None, seed: int) -> VGG16Features:
    """The VGG-16 loss network: ImageNet weights from a local file, or seeded random ones.

    Raises:
        CheckpointError: ``weights`` is missing, not a VGG-16 state dict, or refused by
            ``torch.load(weights_only=True)`` (e.g. a pickle that would run code).
    """
    torch.manual_seed(seed)
    try:
        return VGG16Features(weights=weights)
    except (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"--vgg-weights {weights}: cannot be used ({first})") from exc


class ContentBatches:
    """Exactly ``steps`` batches from an iterator of content batches (one engine epoch).

    Raises (while iterating):
        ValueError: The iterator ran out before ``steps`` batches.
    """

    def __init__(self, batches: Iterator[torch.Tensor], steps: int) -> None:
        self.batches, self.steps = batches, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[torch.Tensor]:
        for step in range(1, self.steps + 1):
            content = next(self.batches, None)
            if content is None:
                raise ValueError(
                    f"the content batches ran out after {step - 1} of {self.steps} steps"
                )
            yield content


class StyleLosses(SumMetric):
    """Mean ``content``, ``style``, ``tv`` and ``total`` losses over the steps (or batches),
    keys prefixed ``train_``/``test_``; ``<prefix>loss`` is the total."""

    def __init__(self, device: torch.device, prefix: str) -> None:
        super().__init__(device, {**dict.fromkeys(TERMS, torch.float64), "steps": torch.int64})
        self.prefix = prefix

    def update(self, batch: Any, output: Any) -> None:
        terms = output.output if isinstance(output, StepResult) else output
        self.add(**{k: terms[k] for k in TERMS}, steps=1)

    def finish(self, totals: dict[str, torch.Tensor]) -> dict[str, float]:
        steps = max(int(totals["steps"].item()), 1)
        means = {k: totals[k].item() / steps for k in TERMS}
        return {
            f"{self.prefix}loss": means["total"],
            **{f"{self.prefix}{k}": means[k] for k in TERMS if k != "total"},
        }


@register_task("style_transfer")
class StyleTransferTask(Task):
    """Train an image-to-image network against a :class:`PerceptualLoss`.

    Args:
        loss: The perceptual loss (style image and VGG fixed).
    """

    monitor = "test_loss"
    mode = "min"

    def __init__(self, loss: PerceptualLoss) -> None:
        self.loss = loss

    def training_step(self, forward: Forward, batch: Any) -> StepResult:
        losses = self.loss(forward(batch), batch)
        return StepResult(losses["total"], {k: v.detach() for k, v in losses.items()})

    def train_metric(self, device: torch.device) -> StyleLosses:
        return StyleLosses(device, "train_")

    def eval_step(self, forward: Forward, batch: Any) -> dict[str, torch.Tensor]:
        losses: dict[str, torch.Tensor] = self.loss(forward(batch), batch)
        return losses

    def eval_metric(self, loaders: Loaders, device: torch.device) -> StyleLosses:
        return StyleLosses(device, "test_")


def train_style_network(
    model: nn.Module,
    batches: Iterator[torch.Tensor],
    loss: PerceptualLoss,
    *,
    steps: int,
    lr: float = 1e-3,
    post_step: Callable[[nn.Module], None] | None = None,
    progress: bool = False,
) -> list[dict[str, float]]:
    """Train ``model`` with Adam for ``steps`` batches of content images in [0, 1].

    One engine epoch of ``steps`` updates at a constant learning rate.

    Args:
        model: The transformation network (trained in place).
        batches: Content batches ``(N, 3, H, W)``, at least ``steps`` of them.
        loss: The perceptual loss.
        steps: Number of updates.
        lr: Adam's learning rate (Johnson et al.: 1e-3).
        post_step: Called after every update (e.g. :func:`normlab.norms.post_step` for BIN).
        progress: Show the engine's progress bar.

    Returns:
        One record per step: ``step``, ``content``, ``style``, ``tv``, ``total``.

    Raises:
        NonFiniteLossError: The loss became NaN or infinite (no update was applied).
        ValueError: ``batches`` ran out before ``steps``.
    """
    optimizer = torch.optim.Adam(param_groups(model, lr, 0.0), lr=lr)
    history: list[dict[str, float]] = []

    def record(info: StepInfo) -> None:
        history.append({"step": info.step + 1, **{k: float(v) for k, v in info.output.items()}})

    trainer = Trainer(
        model,
        optimizer,
        LRSchedule("constant", 1.0),
        task=StyleTransferTask(loss),
        device=next(model.parameters()).device,
        post_step=post_step or _keep,
        callbacks=[record],
        progress=progress,
    )
    trainer.train_epoch(ContentBatches(batches, steps), 0)
    return history


def _keep(model: nn.Module) -> None:
    del model
