"""Pieces of normlab's detectors that need no torchvision: the ResNet cut into detection
stages, Detectron's stage freezing, pretrained classification weights, seeded sampling.

:mod:`normlab.models.detection` assembles them with ``torchvision.models.detection`` (and
imports torchvision only when a detector is built, so ``import normlab`` stays fast).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from normlab.errors import CheckpointError, ConfigError
from normlab.models.imagenet_resnet import ResNet
from normlab.models.state_check import state_mismatch
from normlab.norms import canonical_norm, freeze_norm, get_norm_layer, validate_norm_kwargs

__all__ = [
    "STAGES",
    "ResNetC4Body",
    "ResNetC5Head",
    "SeededSampler",
    "freeze_stages",
    "load_classification_weights",
    "norm_factory",
]

STAGES = ("layer4", "layer3", "layer2", "layer1", "stem")
"""The ResNet stages in the order ``trainable_layers`` counts them (torchvision's
``_resnet_fpn_extractor``): ``trainable_layers = k`` trains the first ``k``."""

_STEM = ("conv1", "bn1")
_LISTED = 4
"""How many keys a pretrained-weights error names before ``...``."""


class ResNetC4Body(nn.Module):
    """Stem and stages 1-3 (conv1-conv4, stride 16) of a ResNet: the C4 detector's backbone.

    Submodule names are the classification network's (``conv1``, ``bn1``, ``layer1`` ...),
    so the body's state dict is that network's minus ``layer4`` and ``fc``.

    Shape:
        - Input: ``(N, 3, H, W)``; Output: ``(N, out_channels, ⌈H/16⌉, ⌈W/16⌉)``
          (``out_channels`` = 1024 for ResNet-50, 256 for ResNet-18).
    """

    def __init__(self, resnet: ResNet) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = (
            resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        )
        self.layer1, self.layer2, self.layer3 = resnet.layer1, resnet.layer2, resnet.layer3
        self.out_channels = resnet.num_features // 2

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))


class ResNetC5Head(nn.Module):
    """The C4 detector's box head (Ren et al. 2015; Detectron's ``add_ResNet_roi_conv5_head``):
    the ResNet's stage 4 (conv5, first unit stride 2) on each RoI, then global average pooling.

    Shape:
        - Input: ``(R, C4, 14, 14)`` RoI features; Output: ``(R, out_channels)``
          (2048 for ResNet-50, 512 for ResNet-18).
    """

    def __init__(self, resnet: ResNet) -> None:
        super().__init__()
        self.layer4 = resnet.layer4
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.out_channels = resnet.num_features

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(self.avgpool(self.layer4(x)), 1)


def _stage_modules(resnet: ResNet, stage: str) -> list[nn.Module]:
    names = _STEM if stage == "stem" else (stage,)
    return [getattr(resnet, name) for name in names]


def freeze_stages(resnet: ResNet, trainable_layers: int) -> list[str]:
    """Detectron's ``FREEZE_AT``: freeze every stage but the last ``trainable_layers``.

    A frozen stage is frozen whole: its parameters stop requiring gradients (as in
    torchvision's detection backbones) and its norm layers use and keep their running
    statistics (:func:`normlab.freeze_norm`), so the stage computes a fixed function also
    with a norm that has batch statistics (Detectron's frozen stages hold affine-channel
    layers only).

    Args:
        resnet: the backbone network.
        trainable_layers: 0-5 (5 trains everything; 3 freezes the stem and ``layer1``, as
            Detectron's ``FREEZE_AT: 2``).

    Returns:
        The frozen stages, in :data:`STAGES` names.
    """
    frozen = list(STAGES[trainable_layers:])
    for stage in frozen:
        for module in _stage_modules(resnet, stage):
            freeze_norm(module)
            module.requires_grad_(False)
    return frozen


def norm_factory(
    norm: str | None, norm_kwargs: Mapping[str, Any], option: str
) -> Callable[[int], nn.Module] | None:
    """The ``norm_layer`` callable torchvision's heads take (``norm_layer(channels)``),
    building normlab layers of the registered norm ``norm`` with ``norm_kwargs``; ``None``
    for no norm. Also checks a backbone's norm name and options before the ResNet is built.

    Raises:
        ConfigError: ``norm`` is not a registered name, or ``norm_kwargs`` holds an option
            it does not take (the message names ``option``).
    """
    if norm is None:
        return None
    try:
        name = canonical_norm(norm)
        validate_norm_kwargs(name, norm_kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{option}: {exc}") from None
    return get_norm_layer(name, **norm_kwargs)


def _listed(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_LISTED])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > _LISTED else ''})"


def _read_state(path: str) -> Mapping[str, Any]:
    if not os.path.isfile(path):
        raise CheckpointError(
            f"pretrained weights not found at {path!r}; pass a local file holding the "
            "state dict of a classification ResNet (torchvision or normlab) or a normlab "
            "checkpoint (last.pt / best.pt of a classification run)"
        )
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read pretrained weights {path!r}: {first}") from None
    if isinstance(loaded, Mapping) and isinstance(loaded.get("model"), Mapping):
        loaded = loaded["model"]
    if not isinstance(loaded, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in loaded.items()
    ):
        raise CheckpointError(
            f"{path!r} holds no state dict of tensors (nor a normlab checkpoint with "
            "'model'); pass a classification ResNet's state_dict() file"
        )
    return loaded


def load_classification_weights(resnet: ResNet, path: str | os.PathLike[str], what: str) -> None:
    """Load a classification network's weights into the detector's backbone ResNet.

    ``path`` holds a state dict of the same ResNet with the same norm (torchvision's keys
    for ``norm="bn"``, normlab's for every norm: ``conv1.weight``, ``bn1.*``,
    ``layer1.0.conv1.weight`` ...) or a normlab checkpoint (its ``"model"``). The
    classifier (``fc.*``) is ignored; every other key must be present with its shape.
    Read with ``torch.load(weights_only=True)``.

    Args:
        resnet: the backbone, before it is cut into detection stages.
        path: the file.
        what: the backbone in words for messages, e.g. ``"resnet50 with norm 'sn'"``.

    Raises:
        CheckpointError: a missing or unreadable file, or keys / shapes that do not fit
            (one line naming the first offending keys).
    """
    path = os.fspath(path)
    state = {k: v for k, v in _read_state(path).items() if not k.startswith("fc.")}
    expected = {k: v.shape for k, v in resnet.state_dict().items() if not k.startswith("fc.")}
    mismatch = state_mismatch(state, expected)
    if mismatch:
        wrong = [f"{key} {got} vs {want}" for key, got, want in mismatch.wrong_shapes]
        problems = [
            f"{label} {_listed(keys)}"
            for label, keys in (
                ("missing keys", mismatch.missing), ("unexpected keys", mismatch.unexpected),
                ("shape mismatches", wrong),
            )
            if keys
        ]
        raise CheckpointError(
            f"pretrained weights {path!r} do not fit the backbone ({what}): "
            f"{'; '.join(problems)}; pass the state dict of that network with that norm"
        )
    resnet.load_state_dict(state, strict=False)


class SeededSampler:
    """torchvision's ``BalancedPositiveNegativeSampler`` with reproducible draws per image.

    The same selection rule (up to ``batch_size_per_image`` elements per image, at most a
    ``positive_fraction`` of them positive, drawn uniformly without replacement from the
    positives (matched index >= 1) and negatives (0)), but with :attr:`seeds` set the
    elements of image ``i`` are drawn on the CPU from a generator seeded with ``seeds[i]``
    and the sampler's ``stage``, so an image's sample does not depend on its position in
    the batch, the process that holds it, or the device. Without seeds it draws from
    torch's global generator on the input's device, exactly as torchvision does.

    Duck-typed for torchvision's RPN and RoI heads (their ``fg_bg_sampler``), which only
    call it.

    Args:
        batch_size_per_image: elements sampled per image.
        positive_fraction: the largest share of positives.
        stage: a fixed per-stage offset mixed into the seed (RPN 0, RoI heads 1), so the
            two stages of one image draw from different streams.
    """

    def __init__(self, batch_size_per_image: int, positive_fraction: float, stage: int) -> None:
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.stage = stage
        self.seeds: tuple[int, ...] | None = None

    def _generators(self, count: int) -> list[torch.Generator | None]:
        if self.seeds is None:
            return [None] * count
        if len(self.seeds) != count:
            raise ValueError(
                f"set_sample_seeds gave {len(self.seeds)} seeds for a batch of {count} "
                "images; set one seed per image before each training forward"
            )
        return [
            torch.Generator().manual_seed((2 * seed + self.stage) % 2**64) for seed in self.seeds
        ]

    def _draw(self, indices: Tensor, count: int, generator: torch.Generator | None) -> Tensor:
        if generator is None:
            chosen = torch.randperm(indices.numel(), device=indices.device)[:count]
        else:
            chosen = torch.randperm(indices.numel(), generator=generator)[:count]
        return indices[chosen.to(indices.device)]

    def __call__(self, matched_idxs: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Sample each image's elements.

        Args:
            matched_idxs: one tensor per image: -1 ignored, 0 negative, >= 1 positive.

        Returns:
            ``(positive masks, negative masks)``: per image, ``uint8`` masks shaped like its
            ``matched_idxs`` marking the sampled elements.
        """
        positives: list[Tensor] = []
        negatives: list[Tensor] = []
        for matched, generator in zip(matched_idxs, self._generators(len(matched_idxs))):
            positive = torch.where(matched >= 1)[0]
            negative = torch.where(matched == 0)[0]
            num_pos = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(negative.numel(), self.batch_size_per_image - num_pos)
            for indices, count, masks in (
                (positive, num_pos, positives), (negative, num_neg, negatives)
            ):
                mask = torch.zeros_like(matched, dtype=torch.uint8)
                mask[self._draw(indices, count, generator)] = 1
                masks.append(mask)
        return positives, negatives
