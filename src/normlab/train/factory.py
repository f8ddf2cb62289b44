"""Build the pieces of a run from its config: device, data loaders, model, optimizer.

Each builder reads one config section and calls the public API of the layer it needs
(``normlab.data``, ``normlab.models``, :func:`normlab.norms.param_groups`). Tasks
(:mod:`normlab.tasks`) decide which builders a run uses; tests can substitute them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from normlab.data import DeviceLoader, MixedLoader, create_dataset, dataset_info
from normlab.models import create_model
from normlab.norms import param_groups, set_noise, set_virtual_batch_size
from normlab.train.config import DataConfig, MixConfig, ModelConfig, OptimConfig
from normlab.train.errors import ConfigError
from normlab.train.schedule import scaled_lr

__all__ = ["Loaders", "build_loaders", "build_model", "build_optimizer", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA if available else CPU; otherwise ``torch.device(name)``, checked.

    Raises:
        ConfigError: Unknown device string, or CUDA requested but unavailable.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(
            f"train.device {name!r} is not a device: use auto, cpu or cuda[:N]"
        ) from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"train.device is {name!r} but CUDA is not available; use train.device=cpu"
        )
    return device


@dataclass
class Loaders:
    """Training and test loaders plus what the model needs to know about the data.

    Attributes:
        train: Shuffling, augmenting loader of training batches (``set_epoch`` aware).
        test: Sequential, non-augmenting loader of the test split.
        num_classes: Number of classes the model must output (with ``data.mix``: primary
            plus secondary classes).
        in_chans: Image channels.
        test_classes: Score test batches on the first ``test_classes`` outputs only (the
            primary classes of a mixed run); ``None`` scores all outputs.
    """

    train: Any
    test: Any
    num_classes: int
    in_chans: int
    test_classes: int | None = None


def _secondary_options(mix: MixConfig, primary: Any) -> dict[str, Any]:
    """``mix.kwargs`` plus the primary's ``size``/``channels`` where the reader takes them."""
    channels, height, width = primary.image_shape
    shape = {"channels": channels, **({"size": height} if height == width else {})}
    accepted = dataset_info(mix.dataset).options
    return {**{k: v for k, v in shape.items() if k in accepted}, **mix.kwargs}


def _mixed_train_loader(
    data: DataConfig, mix: MixConfig, primary: Any, *, seed: int, device: torch.device
) -> Any:
    """A :class:`normlab.data.MixedLoader` of ``primary`` and ``mix``'s training split.

    Raises:
        ConfigError: The two data sets cannot be mixed (e.g. different image shapes).
    """
    options = _secondary_options(mix, primary)
    secondary = create_dataset(mix.dataset, root=mix.root, split="train", **options)
    try:
        return MixedLoader(
            primary,
            secondary,
            mix.k,
            primary_batch=data.batch_size,
            secondary_per_k=mix.secondary_per_k,
            augment=data.augment,
            seed=seed,
            device=device,
            normalize_secondary=mix.normalize,
        )
    except ValueError as exc:
        raise ConfigError(f"data.mix cannot mix {data.name} with {mix.dataset}: {exc}") from exc


def build_loaders(data: DataConfig, *, seed: int, device: torch.device) -> Loaders:
    """Read both splits with ``normlab.data.create_dataset`` and wrap them in device loaders.

    With ``data.mix``, training batches mix in the secondary data set and the test split
    is scored on the primary classes only (see :class:`~normlab.train.config.MixConfig`).
    """
    train_set = create_dataset(data.name, root=data.root, split=data.train_split, **data.kwargs)
    test_set = create_dataset(data.name, root=data.root, split=data.test_split, **data.kwargs)
    in_chans = int(train_set.images.shape[1])
    if data.mix is not None:
        train = _mixed_train_loader(data, data.mix, train_set, seed=seed, device=device)
        classes = (train.num_classes, train.num_primary_classes)
    else:
        train = DeviceLoader(
            train_set,
            data.batch_size,
            train=True,
            augment=data.augment,
            drop_last=data.drop_last,
            seed=seed,
            device=device,
        )
        classes = (train_set.num_classes, None)
    test = DeviceLoader(
        test_set,
        data.eval_batch_size or data.batch_size,
        train=False,
        augment=False,
        drop_last=False,
        seed=seed,
        device=device,
    )
    return Loaders(train, test, classes[0], in_chans, test_classes=classes[1])


def build_model(model: ModelConfig, *, num_classes: int, in_chans: int) -> nn.Module:
    """``normlab.models.create_model`` with the data's classes and channels as defaults,
    then ``model.noise`` and ``model.virtual_batch_size`` set on its norms.

    Raises:
        ConfigError: ``model.num_classes`` is fewer than the data's labels need.
    """
    if model.num_classes is not None and model.num_classes < num_classes:
        raise ConfigError(
            f"model.num_classes={model.num_classes} is fewer than the {num_classes} classes "
            "of the data (with data.mix: primary + secondary); leave it null"
        )
    net = create_model(
        model.name,
        num_classes=model.num_classes or num_classes,
        in_chans=model.in_chans or in_chans,
        norm=model.norm,
        **model.kwargs,
    )
    noise = None if model.noise is None else (float(model.noise[0]), float(model.noise[1]))
    set_noise(net, noise)
    return set_virtual_batch_size(net, model.virtual_batch_size)


def build_optimizer(model: nn.Module, optim: OptimConfig, batch_size: int) -> torch.optim.SGD:
    """SGD over ``normlab.param_groups`` (per-role lr and weight decay, e.g. BIN gates).

    The learning rate is scaled linearly with the batch size when
    ``optim.lr_reference_batch`` is set. The :class:`~normlab.train.engine.Trainer`
    keeps each group's starting lr as ``initial_lr``, which the schedule multiplies.
    """
    if optim.name != "sgd":
        raise ConfigError(f"optim.name {optim.name!r} is not supported; use sgd")
    lr = scaled_lr(optim, batch_size)
    groups = param_groups(model, lr, optim.weight_decay, **optim.param_groups)
    return torch.optim.SGD(
        groups,
        lr=lr,
        momentum=optim.momentum,
        nesterov=optim.nesterov,
        weight_decay=optim.weight_decay,
    )
