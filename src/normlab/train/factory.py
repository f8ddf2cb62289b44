"""Build the pieces of a run from its config: device, data loaders, model, optimizer.

Each builder reads one config section and calls the public API of the layer it needs
(``normlab.data``, ``normlab.models``, :func:`normlab.norms.param_groups`). Tasks
(:mod:`normlab.tasks`) decide which builders a run uses; tests can substitute them.

``data.loader`` chooses the data path: ``memory`` reads each split into one tensor and
batches it on the device (:class:`normlab.data.DeviceLoader`); ``stream`` indexes the files
once (:func:`normlab.data.create_source`) and decodes every sample in DataLoader workers
(:class:`normlab.data.StreamingLoader`) through the config's transform presets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from normlab.data import DeviceLoader, MixedLoader, create_dataset, dataset_info
from normlab.data.errors import CorruptDatasetError
from normlab.data.image_folder import IMAGENET_STATS
from normlab.data.presets import transform_preset
from normlab.data.registry import create_source
from normlab.data.streaming import SampleSource, StreamingLoader
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

    def close(self) -> None:
        """Stop the loaders' worker processes (those that have a ``close``, e.g.
        :meth:`~normlab.data.streaming.WorkerLoader.close`)."""
        for loader in (self.train, self.test):
            close = getattr(loader, "close", None)
            if close is not None:
                close()


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


STREAM_SIZE = 224
"""Image side of a streamed data set whose ``data.kwargs`` set no ``size`` (ImageNet's)."""
_LOADER_OPTIONS = ("size", "mean", "std", "channels")
"""``data.kwargs`` keys the streaming loader reads itself; the others go to the source."""


def _source(data: DataConfig, split: str, options: dict[str, Any]) -> SampleSource:
    """The indexed ``split`` of a streamed data set (``cache_dir`` and ``on_bad_file``
    passed where its indexer takes them)."""
    accepted = dataset_info(data.name).source_options
    extra = {"cache_dir": data.cache_dir, "on_bad_file": data.on_bad_file}
    options = {**options, **{k: v for k, v in extra.items() if k in accepted}}
    return create_source(data.name, data.root, split, **options)


def _check_same_classes(data: DataConfig, train: SampleSource, test: SampleSource) -> None:
    """Both splits label the same classes in the same order, and every class has test
    images.

    Raises:
        CorruptDatasetError: One line naming the classes only one split has.
    """
    present = {test.classes[test.label(i)] for i in range(len(test))}
    only_train = [name for name in train.classes if name not in present]
    only_test = [name for name in test.classes if name not in train.classes]
    if not only_train and not only_test and tuple(test.classes) == tuple(train.classes):
        return
    differ = [f"only {split} has {', '.join(names)}"
              for split, names in ((data.train_split, only_train), (data.test_split, only_test))
              if names]
    raise CorruptDatasetError(
        str(data.root),
        f"the classes of {data.train_split} and {data.test_split} differ "
        f"({'; '.join(differ) or 'in label order'})",
        "Give both splits the same class folders",
    )


def _streaming_loaders(data: DataConfig, *, seed: int, device: torch.device) -> Loaders:
    """Index both splits and stream them through the config's transform presets.

    Raises:
        ConfigError: ``data.root`` is not set, or ``data.kwargs.channels`` is not 3.
        MissingDatasetError, CorruptDatasetError: The folder is missing, holds a bad file
            (``on_bad_file=stop``), or its splits' classes differ.
    """
    if data.root is None:
        raise ConfigError(
            f"data.root is not set: data.loader=stream reads {data.name!r} from a local "
            "folder; give it with --set data.root=PATH (`normlab data sample OUT` writes a "
            "small ImageNet-format folder to try a recipe on)"
        )
    options = dict(data.kwargs)
    if options.get("channels", 3) != 3:
        raise ConfigError("data.kwargs.channels: the streaming loader decodes RGB images (3)")
    size = int(options.get("size", STREAM_SIZE))
    mean = options.get("mean") or IMAGENET_STATS[0]
    std = options.get("std") or IMAGENET_STATS[1]
    source_options = {k: v for k, v in options.items() if k not in _LOADER_OPTIONS}
    train_source = _source(data, data.train_split, source_options)
    test_source = _source(data, data.test_split, source_options)
    _check_same_classes(data, train_source, test_source)

    def stream(source: SampleSource, batch_size: int, preset: str, train: bool) -> Any:
        return StreamingLoader(
            source, batch_size, train=train, drop_last=data.drop_last if train else False,
            transform=transform_preset(preset, size=size), mean=mean, std=std, seed=seed,
            device=device, workers=data.workers, on_bad_file=data.on_bad_file,
        )

    train = stream(train_source, data.batch_size, data.train_preset, True)
    test = stream(test_source, data.eval_batch_size or data.batch_size, data.eval_preset, False)
    return Loaders(train, test, len(train_source.classes), 3)


def build_loaders(data: DataConfig, *, seed: int, device: torch.device) -> Loaders:
    """Read both splits with ``normlab.data.create_dataset`` and wrap them in device loaders,
    or stream them (``data.loader=stream``, :func:`_streaming_loaders`).

    With ``data.mix``, training batches mix in the secondary data set and the test split
    is scored on the primary classes only (see :class:`~normlab.train.config.MixConfig`).
    """
    if data.loader == "stream":
        return _streaming_loaders(data, seed=seed, device=device)
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
