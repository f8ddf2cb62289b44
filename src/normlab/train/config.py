"""Run configs: one dataclass schema, YAML files with ``base:`` inheritance, ``--set`` overrides.

A config file is a YAML mapping with the sections of :class:`Config` (``model``, ``data``,
``optim``, ``schedule``, ``train``, ``eval``, ``run``) and two optional top-level keys:
``description`` (free text, e.g. which paper table the recipe reproduces) and ``base``
(the name of a shipped config or a path relative to the file, or a list of them, that this
one starts from, merged in order; mappings are merged key by key, everything else is
replaced). Shipped files whose name starts with ``_`` are fragments meant only as bases:
:func:`list_configs` does not list them.

Overrides use dotted keys and YAML scalars, as in timm: ``optim.lr=0.05``,
``model.norm=iebn``, ``schedule.milestones=[2,4]``, ``model.kwargs.drop_rate=0.5``.
Keys under the free-form mappings (``model.kwargs``, ``data.kwargs``, ``data.mix.kwargs``,
``optim.param_groups``) are passed through to the function they configure; every other
unknown key raises :class:`~normlab.train.errors.ConfigError` naming the valid keys near it.

Optional sections (``data.mix``) are ``null`` by default; setting any of their keys, in a
file or with ``--set data.mix.k=2``, switches them on with defaults for the other keys, and
``--set data.mix=null`` switches them off again.

Every value is validated when a section is constructed (``__post_init__``), so a YAML file,
an override and a Python caller (``TrainConfig(amp="fp8")``) meet the same checks: its
type; closed choices as ``typing.Literal`` (``train.amp``, ``schedule.name``,
``optim.name``, ``data.mix.normalize``) and patterns (``train.device``); ranges as
``typing.Annotated`` metadata (:mod:`normlab.train.validation`); names against their
registries (``model.name``, ``model.norm`` with its aliases, ``data.name``); and the
free-form mappings against what they configure (``model.kwargs`` against the model's
constructor, ``model.kwargs.norm_kwargs`` against the norm's, ``data.kwargs`` against the
data set's reader, ``optim.param_groups`` against :func:`normlab.param_groups`). A bad
value raises :class:`~normlab.errors.ConfigError` naming the key and the valid choices.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml

from normlab.data.presets import list_transform_presets
from normlab.data.registry import DatasetInfo, dataset_info, list_datasets
from normlab.models.detection import SAME_AS_HEAD
from normlab.models.registry import list_models, model_constructor, model_info
from normlab.norms.registry import (
    canonical_norm,
    norm_options,
    validate_norm_kwargs,
)
from normlab.norms.training import param_groups
from normlab.train.errors import ConfigError
from normlab.train.run_folder import write_text_atomic
from normlab.train.validation import (
    Fraction,
    NonNegativeFloat,
    NonNegativeInt,
    Pattern,
    PositiveFloat,
    PositiveInt,
    UnitInterval,
    check_keywords,
    check_value,
    closest,
    keyword_parameters,
    unknown_name,
)

__all__ = [
    "Config",
    "DataConfig",
    "EvalConfig",
    "MixConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "ScheduleConfig",
    "TrainConfig",
    "AmpMode",
    "BadFilePolicy",
    "Device",
    "EvalStatistics",
    "LoaderKind",
    "OptimName",
    "ScheduleName",
    "SecondaryNormalization",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "config_to_yaml",
    "find_config",
    "list_configs",
    "load_config",
    "save_config",
]


AmpMode = Literal["none", "bf16"]
"""``train.amp``: no autocast, or bfloat16 autocast (CUDA or CPU)."""
ScheduleName = Literal["multistep", "cosine", "constant"]
"""``schedule.name``: the learning-rate schedules of :class:`~normlab.train.LRSchedule`."""
OptimName = Literal["sgd"]
"""``optim.name``: the optimizers the trainer builds."""
SecondaryNormalization = Literal["primary", "own"]
"""``data.mix.normalize``: whose mean/std normalize the secondary images."""
LoaderKind = Literal["memory", "stream"]
"""``data.loader``: the in-memory device loader or the streaming DataLoader pipeline."""
EvalStatistics = Literal["moving_average", "batch_average"]
"""``eval.statistics``: the norms' running statistics, or the SN paper's batch average."""
BadFilePolicy = Literal["stop", "skip"]
"""``data.on_bad_file``: stop at an unreadable file, or skip and count it."""
Device = Annotated[str, Pattern(r"auto|cpu|cuda(:\d+)?", "auto, cpu, cuda or cuda:N")]
"""``train.device``."""

_SET_BY_MODEL_CONFIG = ("norm", "num_classes", "in_chans")
"""``create_model`` arguments that :class:`ModelConfig` sets from its own keys."""


_HINTS: dict[type, dict[str, Any]] = {}


def _field_hints(cls: type) -> dict[str, Any]:
    """Each field's annotation with its ``Annotated`` metadata (ranges, patterns)."""
    if cls not in _HINTS:
        hints = typing.get_type_hints(cls, include_extras=True)
        _HINTS[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    return _HINTS[cls]


class _Section:
    """What every config section does on construction: each field is converted and checked
    against its annotation (:func:`~normlab.train.validation.check_value`), nested sections
    must be sections, then :meth:`_check` checks across fields and against registries."""

    KEY: ClassVar[str] = ""
    """The section's dotted key (``data.mix``), for messages."""

    def __post_init__(self) -> None:
        for name, hint in _field_hints(type(self)).items():
            key = f"{self.KEY}.{name}" if self.KEY else name
            value = getattr(self, name)
            section = _section(hint)
            if section is None:
                setattr(self, name, check_value(value, hint, key))
            elif not isinstance(value, section) and not (value is None and section is not hint):
                raise ConfigError(
                    f"config section {key!r} must be a {section.__name__}, got {value!r}"
                )
        self._check()

    def _check(self) -> None:
        """Checks across fields and against registries; none by default."""


def _check_norm(key: str, name: str) -> None:
    """``name`` is a registered norm or alias (the message names the nearest)."""
    try:
        canonical_norm(name)
    except ConfigError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def _unknown_option(key: str, owner: str, valid: list[str]) -> ConfigError:
    option = key.rpartition(".")[2]
    return ConfigError(
        f"{key}: {owner} takes no option {option!r}.{closest(option, valid)} "
        f"Valid options: {', '.join(valid) or 'none'}."
    )


def _dataset(key: str, name: str) -> DatasetInfo:
    """The registry entry of the data set ``name`` given under ``key``."""
    try:
        return dataset_info(name)
    except ValueError:
        valid = list_datasets()
        raise unknown_name(key, name, "data set", valid, "normlab list datasets") from None


def _streamed(task: str) -> list[str]:
    """The data sets of ``task`` that can be streamed."""
    infos = (dataset_info(name) for name in list_datasets())
    return [info.name for info in infos if info.source is not None and info.task == task]


def _check_reader_options(key: str, options: dict[str, Any], info: DatasetInfo) -> None:
    """Every key of ``options`` is an option of the data set's reader, of its type."""
    for option in options:
        if option not in info.options:
            raise _unknown_option(f"{key}.{option}", f"data set {info.name!r}", list(info.options))
    check_keywords(key, options, keyword_parameters(info.reader) or {})


@dataclass
class ModelConfig(_Section):
    """Which network to build (``normlab.create_model``).

    Attributes:
        name: Registered model name, e.g. ``resnet164`` (``normlab list models``).
        norm: Normalization layer name or alias, e.g. ``bn``, ``iebn``, ``sn``, ``bin``
            (``normlab list norms``).
        num_classes: Output classes; ``None`` takes the data set's number of classes.
        in_chans: Input channels; ``None`` takes the data set's.
        kwargs: Extra keyword arguments for ``create_model``, checked against the model's
            constructor (e.g. ``se_reduction``, ``last_gamma``, ``norm_downsample``;
            ``norm_kwargs``, checked against the norm's constructor).
        noise: ``[Na, Nb]``: the IEBN paper's constant-noise attack (Eqn. 11),
            ``x_hat -> Na * x_hat + Nb`` in every normlab norm, in training and at test
            (:func:`normlab.norms.set_noise`); ``None``: none.
        virtual_batch_size: Batch statistics over groups of this many samples, as on
            ``batch / virtual_batch_size`` devices with their own statistics (the SN paper's
            (GPUs, samples per GPU) settings on one device;
            :func:`normlab.norms.set_virtual_batch_size`); ``None``: the whole batch.
    """

    KEY: ClassVar[str] = "model"

    name: str = "resnet20"
    norm: str = "bn"
    num_classes: PositiveInt | None = None
    in_chans: PositiveInt | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    noise: list[float] | None = None
    virtual_batch_size: PositiveInt | None = None

    def _check(self) -> None:
        if self.noise is not None and len(self.noise) != 2:
            raise ConfigError(f"model.noise must be [Na, Nb] or null, got {self.noise!r}")
        if self.name not in list_models():
            raise unknown_name("model.name", self.name, "model", list_models(),
                               "normlab list models")
        _check_norm("model.norm", self.norm)
        self._check_kwargs()

    def _check_kwargs(self) -> None:
        options = keyword_parameters(model_constructor(self.name))
        for option in self.kwargs:
            if option in _SET_BY_MODEL_CONFIG:
                raise ConfigError(f"model.kwargs.{option}: set model.{option} instead")
            if options is not None and option not in options:
                valid = sorted(o for o in options if o not in _SET_BY_MODEL_CONFIG)
                raise _unknown_option(f"model.kwargs.{option}", f"model {self.name!r}", valid)
        check_keywords("model.kwargs", self.kwargs, options or {})
        for option, value in self.kwargs.items():
            named = option.endswith("_norm") or option == "norm_downsample"
            if named and isinstance(value, str) and value != SAME_AS_HEAD:
                _check_norm(f"model.kwargs.{option}", value)
        norm_kwargs = self.kwargs.get("norm_kwargs", {})
        if not isinstance(norm_kwargs, dict):
            raise ConfigError(
                f"model.kwargs.norm_kwargs must be a mapping of the norm's options, "
                f"got {norm_kwargs!r}"
            )
        try:
            validate_norm_kwargs(self.norm, norm_kwargs)
        except ConfigError as exc:
            raise ConfigError(f"model.kwargs.norm_kwargs: {exc}") from None
        annotations = {
            option: Any if p.annotation is p.empty else p.annotation
            for option, p in norm_options(self.norm).items()
        }
        check_keywords("model.kwargs.norm_kwargs", norm_kwargs, annotations)


@dataclass
class MixConfig(_Section):
    """Mix-datasets attack (IEBN paper, Table 3): foreign images in every training batch.

    With ``data.mix`` set, training batches come from :class:`normlab.data.MixedLoader`:
    ``data.batch_size`` primary images (the paper: 100 CIFAR-100 images) followed by
    ``k * secondary_per_k`` images of the ``dataset`` training split (the paper: 120·k MNIST
    or Fashion-MNIST images at 32×32×3), so a training batch holds
    ``data.batch_size + k * secondary_per_k`` images (:attr:`DataConfig.train_batch`, which
    is also the batch that ``optim.lr_reference_batch`` scaling uses). Epochs are passes
    over the primary data, the last incomplete batch dropped (``data.drop_last`` must stay
    true). ``data.augment`` applies to the whole batch.

    The network gets primary + secondary outputs (secondary labels follow the primary's;
    ``model.num_classes``, if set, must be that sum). ``train_loss``/``train_acc`` score the
    mixed batches over all outputs. Every test metric (``test_acc``, ``test_acc5``,
    ``test_loss``, hence ``final_acc``/``best_acc`` in ``summary.json`` and ``normlab eval``)
    is measured on the primary ``data.test_split`` alone with the primary outputs only
    (argmax over the first ``primary`` columns, as
    :func:`normlab.data.count_primary_correct`), so it compares with primary-only training.

    Attributes:
        dataset: Secondary data set name, e.g. ``mnist``, ``fashion_mnist``, ``synthetic``.
        root: Its local folder; ``None`` for built-in data.
        k: Multiplier of the secondary count (the paper: 2 or 3); 0 gives primary-only
            batches (with the extra outputs).
        secondary_per_k: Secondary images per batch per unit of ``k`` (the paper: 120).
        normalize: Normalize secondary images with the ``primary``'s mean/std (default: one
            input pipeline) or their ``own``.
        kwargs: Extra ``create_dataset`` options for the secondary set. ``size`` and
            ``channels`` default to the primary's image size and channels when its reader
            takes them (MNIST at 32×32×3 next to CIFAR).
    """

    KEY: ClassVar[str] = "data.mix"

    dataset: str = "mnist"
    root: str | None = None
    k: NonNegativeInt = 2
    secondary_per_k: NonNegativeInt = 120
    normalize: SecondaryNormalization = "primary"
    kwargs: dict[str, Any] = field(default_factory=dict)

    def _check(self) -> None:
        info = _dataset("data.mix.dataset", self.dataset)
        _check_reader_options("data.mix.kwargs", self.kwargs, info)

    @property
    def secondary_batch(self) -> int:
        """Secondary images per training batch, ``k * secondary_per_k``."""
        return self.k * self.secondary_per_k


@dataclass
class DataConfig(_Section):
    """Which data to train and evaluate on (``normlab.data``).

    Attributes:
        name: Data set name (``normlab list datasets``).
        root: Local folder or archive with the data; ``None`` for built-in data.
        train_split: Split used for training.
        test_split: Split evaluated every epoch.
        batch_size: Training batch size (the global batch the recipe states); with
            ``mix``, the primary images per batch, to which the secondary ones are added.
        eval_batch_size: Evaluation batch size (>= 1); ``None`` uses ``batch_size``.
        augment: Apply the loader's training augmentation (crop with padding, flip).
        drop_last: Drop the last incomplete training batch.
        kwargs: Extra keyword arguments for ``create_dataset`` (both splits), checked
            against the data set's reader options. ``size`` is the image side of both
            loaders (the streaming transforms' output size; default 224 when streaming).
        mix: Mix a secondary data set into every training batch (:class:`MixConfig`);
            ``None`` (default) trains on this data set alone.
        loader: ``memory``: read the whole split into one tensor and batch it on the device
            (CIFAR, MNIST, built-in data; ``augment`` is its pad-crop + flip); ``stream``:
            index the files once and decode every sample in DataLoader worker processes
            (:class:`normlab.data.StreamingLoader`; ImageNet-size folders and shards),
            transformed by ``train_transform`` and ``eval_transform``.
        train_transform: Streaming training pipeline, a preset name
            (:func:`normlab.data.list_transform_presets`, e.g. ``imagenet_train``); ``None``
            means ``imagenet_train`` when streaming. With ``augment: false`` training uses
            ``eval_transform`` instead. Only for ``loader: stream``.
        eval_transform: Streaming evaluation pipeline (``None``: ``imagenet_eval``, the
            centre crop of a ``size * 256 / 224`` resize). Only for ``loader: stream``.
        workers: Decoding worker processes per training process (``stream``; 0 decodes in
            the main process).
        on_bad_file: ``stop`` at the first file that cannot be read or decoded (the error
            names it) or ``skip`` it and count it (``stream``).
        cache_dir: Folder of the file-index cache (``stream``); ``None``:
            ``$NORMLAB_CACHE_DIR`` or ``~/.cache/normlab/index``.
    """

    KEY: ClassVar[str] = "data"

    name: str = "digits"
    root: str | None = None
    train_split: str = "train"
    test_split: str = "test"
    batch_size: PositiveInt = 128
    eval_batch_size: PositiveInt | None = None
    augment: bool = True
    drop_last: bool = True
    kwargs: dict[str, Any] = field(default_factory=dict)
    mix: MixConfig | None = None
    loader: LoaderKind = "memory"
    train_transform: str | None = None
    eval_transform: str | None = None
    workers: NonNegativeInt = 4
    on_bad_file: BadFilePolicy = "stop"
    cache_dir: str | None = None

    def _check(self) -> None:
        info = _dataset("data.name", self.name)
        _check_reader_options("data.kwargs", self.kwargs, info)
        self._check_loader(info)
        for key, split in (("data.train_split", self.train_split),
                           ("data.test_split", self.test_split)):
            if info.splits is not None and split not in info.splits:
                raise ConfigError(
                    f"{key}: data set {info.name!r} has no split {split!r}."
                    f"{closest(split, info.splits)} Valid: {', '.join(info.splits)}."
                )
        if self.mix is not None and not self.drop_last:
            raise ConfigError(
                "data.mix always drops the last incomplete primary batch; "
                "leave data.drop_last=true (or set data.mix=null)"
            )

    def _check_loader(self, info: DatasetInfo) -> None:
        """The streaming keys name presets, and only a streamed data set sets them."""
        transforms = (("data.train_transform", self.train_transform),
                      ("data.eval_transform", self.eval_transform))
        for key, preset in transforms:
            if preset is not None and preset not in list_transform_presets():
                raise unknown_name(key, preset, "transform preset", list_transform_presets(),
                                   "normlab list transforms")
        if self.loader == "memory":
            given = [key for key, preset in transforms if preset is not None]
            if given:
                raise ConfigError(
                    f"{given[0]} applies to data.loader=stream; the memory loader augments "
                    "with data.augment (set data.loader=stream, or drop the transform)"
                )
            return
        if info.source is None:
            raise ConfigError(
                f"data.loader=stream: data set {info.name!r} cannot be streamed (only "
                f"{', '.join(_streamed(info.task))}); "
                "use data.loader=memory"
            )
        if self.mix is not None:
            raise ConfigError("data.mix mixes in-memory data sets; use data.loader=memory")

    @property
    def train_preset(self) -> str:
        """The streaming training pipeline: ``train_transform`` (default ``imagenet_train``),
        or the evaluation pipeline when ``augment`` is false."""
        if not self.augment:
            return self.eval_preset
        return self.train_transform or "imagenet_train"

    @property
    def eval_preset(self) -> str:
        """The streaming evaluation pipeline: ``eval_transform`` (default ``imagenet_eval``)."""
        return self.eval_transform or "imagenet_eval"

    @property
    def train_batch(self) -> int:
        """Images per training batch: ``batch_size``, plus ``mix``'s secondary images."""
        return self.batch_size + (self.mix.secondary_batch if self.mix else 0)


@dataclass
class EvalConfig(_Section):
    """Which normalization statistics the evaluation after every epoch uses.

    ``moving_average``: the running statistics the norms moved during training (PyTorch's
    BatchNorm convention). ``batch_average``: the SN paper's inference (Sec. 3.1,
    "Inference": "we freeze the parameters of the network and all the SN layers, and feed
    the network with a certain number of mini-batches randomly chosen from the training
    set. Second, we average the means and variances produced by all these mini-batches"):
    before every evaluation, :func:`normlab.update_norm_stats` re-estimates every norm's
    running statistics from ``stats_batches`` training batches (training split, training
    transforms, the training batch size and ``model.virtual_batch_size``, so each batch
    contributes the statistics a training step saw): the first ``stats_batches`` of epoch
    0's order, the batches ``normlab eval --recompute-stats N`` uses (the training loader's
    position and the random generators are restored afterwards, so training and resuming
    are exactly as without it). Done at *every* epoch's evaluation, not only the last: the
    metrics rows, ``best_acc`` and ``best.pt`` then all measure the same model (the paper's
    Fig. 6 plots batch-average accuracy per epoch), and a checkpoint holds the statistics it
    was scored with (``normlab eval`` reproduces the recorded accuracy). Each epoch's row
    records ``eval_stats_batches``; ``summary.json`` records ``eval_statistics``. Under
    torchrun every process averages its share of the batches and the processes' results
    are averaged (:func:`normlab.distributed.average_running_stats`).

    Attributes:
        statistics: ``moving_average`` or ``batch_average``.
        stats_batches: Training batches of a batch average (the SN authors' helper: 200
            batches, about 51k images at batch 256 -- the paper's "50k" samples).
    """

    KEY: ClassVar[str] = "eval"

    statistics: EvalStatistics = "moving_average"
    stats_batches: PositiveInt = 200


_PARAM_GROUP_OPTIONS = tuple(
    p.name for p in inspect.signature(param_groups).parameters.values()
    if p.kind is p.KEYWORD_ONLY
)
"""The keys ``optim.param_groups`` may hold: :func:`normlab.param_groups`'s options."""


@dataclass
class OptimConfig(_Section):
    """SGD settings; weight decay and per-role learning rates go through ``param_groups``.

    Attributes:
        name: Optimizer; only ``sgd`` (the papers' optimizer) is provided.
        lr: Base learning rate (before linear batch scaling).
        momentum: SGD momentum.
        nesterov: Use Nesterov momentum.
        weight_decay: L2 weight decay for parameters whose role allows it.
        lr_reference_batch: If set, the learning rate is scaled linearly with the batch
            size, ``lr * batch / lr_reference_batch`` (SN recipe: 256), where ``batch`` is
            ``data.batch_size`` plus the secondary images of ``data.mix``.
        grad_clip: Clip the global gradient norm to this value; ``None`` disables.
        param_groups: Extra options for ``normlab.param_groups`` (e.g. a BIN gate lr factor).
    """

    KEY: ClassVar[str] = "optim"

    name: OptimName = "sgd"
    lr: PositiveFloat = 0.1
    momentum: Fraction = 0.9
    nesterov: bool = False
    weight_decay: NonNegativeFloat = 1e-4
    lr_reference_batch: PositiveInt | None = None
    grad_clip: PositiveFloat | None = None
    param_groups: dict[str, Any] = field(default_factory=dict)

    def _check(self) -> None:
        if self.nesterov and self.momentum == 0:
            raise ConfigError("optim.nesterov needs optim.momentum > 0, got 0")
        for option in self.param_groups:
            if option not in _PARAM_GROUP_OPTIONS:
                raise _unknown_option(
                    f"optim.param_groups.{option}", "normlab.param_groups",
                    list(_PARAM_GROUP_OPTIONS),
                )


@dataclass
class ScheduleConfig(_Section):
    """Learning-rate schedule, in epochs (fractions allowed; it is applied every step).

    Attributes:
        name: ``multistep``, ``cosine`` or ``constant``.
        milestones: Epochs at which ``multistep`` multiplies the learning rate by ``gamma``.
        gamma: Multistep decay factor.
        warmup_epochs: Length of the linear warm-up (any schedule).
        warmup_start_factor: Learning-rate factor at the first warm-up step.
        min_factor: Final learning-rate factor of ``cosine``.
    """

    KEY: ClassVar[str] = "schedule"

    name: ScheduleName = "multistep"
    milestones: list[float] = field(default_factory=list)
    gamma: PositiveFloat = 0.1
    warmup_epochs: NonNegativeFloat = 0.0
    warmup_start_factor: UnitInterval = 0.0
    min_factor: UnitInterval = 0.0

    def _check(self) -> None:
        epochs = self.milestones
        if any(m < 0 for m in epochs) or any(b <= a for a, b in zip(epochs, epochs[1:])):
            raise ConfigError(
                f"schedule.milestones must be increasing epochs >= 0, got {epochs}"
            )


@dataclass
class TrainConfig(_Section):
    """How the training loop runs.

    Attributes:
        epochs: Number of training epochs.
        seed: Seed of python, numpy and torch random generators and of data shuffling.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        amp: ``none`` or ``bf16``: bfloat16 autocast of the forward passes (training and
            evaluation) on the training device, CUDA or CPU.
        channels_last: Use channels-last memory format (CUDA only, a no-op on CPU).
        compile: Wrap the model in ``torch.compile``.
        deterministic: Ask torch for deterministic algorithms (slower on CUDA).
        label_smoothing: Cross-entropy label smoothing.
        num_threads: CPU threads for torch (``torch.set_num_threads``); ``None`` keeps
            torch's default. ``1`` avoids stalls when other processes share the cores.
        sync_stats: With several training processes (torchrun), pool the batch
            statistics of BN, IEBN, SN and BIN over all of them (:func:`normlab.to_sync`);
            false keeps per-process statistics, as the papers' multi-GPU runs did.
        accumulate_steps: Split every batch into this many micro-batches and accumulate
            their gradients into one optimizer step. The gradient is that of the whole
            batch, but batch-statistics norms (BN, IEBN, SN's BN part, BIN) see only a
            micro-batch: this sets the SN paper's (GPUs, samples per GPU) axis, e.g. a
            batch of 256 with ``accumulate_steps=8`` normalizes over 32 samples.
        limit_batches: Train and evaluate only this many batches per epoch (a dry run of
            a recipe, ``normlab train --limit-batches N``); ``None``: whole epochs.
    """

    KEY: ClassVar[str] = "train"

    epochs: PositiveInt = 10
    seed: NonNegativeInt = 0
    device: Device = "auto"
    amp: AmpMode = "none"
    channels_last: bool = False
    compile: bool = False
    deterministic: bool = False
    label_smoothing: Fraction = 0.0
    num_threads: PositiveInt | None = None
    sync_stats: bool = True
    accumulate_steps: PositiveInt = 1
    limit_batches: PositiveInt | None = None


@dataclass
class RunConfig(_Section):
    """Where and how a run records itself.

    Attributes:
        out_dir: Folder that holds run folders.
        name: Run folder name; ``None`` uses ``<config name>-<date>-<time>``.
        save_best: Also keep ``best.pt`` (the checkpoint of the best test accuracy).
        tensorboard: Write TensorBoard scalars (needs the ``tensorboard`` package).
        progress: Show a progress bar with ETA (``--quiet`` turns it off).
        checkpoint_every: Also write ``last.pt`` every this many optimizer steps inside an
            epoch, so ``--resume`` continues from the next unseen batch; ``None``: only
            at the end of epochs.
    """

    KEY: ClassVar[str] = "run"

    out_dir: str = "runs"
    name: str | None = None
    save_best: bool = True
    tensorboard: bool = False
    progress: bool = True
    checkpoint_every: PositiveInt | None = None


@dataclass
class Config(_Section):
    """A complete, resolved run config."""

    description: str = ""
    task: str = "classification"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def _check(self) -> None:
        """A detection data set or model goes with ``task: detection``, and that task with
        both (other tasks read classification data sets and networks)."""
        detection = self.task == _DETECTION
        kinds = (
            ("data.name", self.data.name, "data set", dataset_info(self.data.name).task),
            ("model.name", self.model.name, "model", model_info(self.model.name)["family"]),
        )
        for key, name, what, kind in kinds:
            if (kind == _DETECTION) != detection:
                fix = (f"set task: {_DETECTION}" if kind == _DETECTION
                       else f"choose a {_DETECTION} {what} (normlab list {what.replace(' ', '')}s)")
                raise ConfigError(
                    f"{key}: {name!r} is {'a' if kind == _DETECTION else 'not a'} "
                    f"{_DETECTION} {what} but the config's task is {self.task!r}; {fix}"
                )


_DETECTION = "detection"


_FREE_FORM = {"model.kwargs", "data.kwargs", "data.mix.kwargs", "optim.param_groups"}
_CONFIG_DIR = ("experiments", "configs")


def _configs_root() -> Path:
    root = resources.files("normlab")
    for part in _CONFIG_DIR:
        root = root / part
    return Path(str(root))


def list_configs() -> list[str]:
    """Names of the configs shipped with normlab (the papers' recipes and tiny variants)."""
    return sorted(p.stem for p in _configs_root().glob("*.yaml") if not p.stem.startswith("_"))


def find_config(spec: str | Path) -> Path:
    """Resolve a config file path or the name of a shipped config.

    Args:
        spec: A path to a YAML file, or a shipped config name (with or without ``.yaml``).

    Returns:
        The path of the YAML file.

    Raises:
        ConfigError: Neither a file nor a shipped config has that name.
    """
    path = Path(spec)
    if path.is_file():
        return path
    shipped = _configs_root() / f"{path.name.removesuffix('.yaml')}.yaml"
    if shipped.is_file():
        return shipped
    names = list_configs()
    close = difflib.get_close_matches(str(spec), names, n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"config {str(spec)!r} is neither a file nor a shipped config.{hint} "
        f"Shipped configs: {', '.join(names)} (see `normlab list configs`)."
    )


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise ConfigError(f"config inheritance cycle: {cycle}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from exc
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a YAML mapping, got {type(raw).__name__}")
    bases = raw.pop("base", None)
    if bases is None:
        return raw
    merged: dict[str, Any] = {}
    for base in bases if isinstance(bases, list) else [bases]:
        relative = path.parent / str(base)
        base_path = relative if relative.is_file() else find_config(str(base))
        merged = _merge(merged, _read_yaml(base_path, (*chain, path)))
    return _merge(merged, raw)


def _unknown_key(key: str, valid: list[str]) -> ConfigError:
    parent, _, leaf = key.rpartition(".")
    where = f"under {parent!r}" if parent else "at the top level"
    return ConfigError(
        f"unknown config key {key!r}.{closest(leaf, valid)} "
        f"Valid keys {where}: {', '.join(sorted(valid))}."
    )


def _section(annotation: Any) -> Any:
    """The dataclass of a ``Section`` or ``Section | None`` annotation, else ``None``."""
    if dataclasses.is_dataclass(annotation):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        sections = [a for a in typing.get_args(annotation) if dataclasses.is_dataclass(a)]
        if len(sections) == 1:
            return sections[0]
    return None


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"config section {prefix!r} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise _unknown_key(full, names)
        hint = hints[key]
        section = _section(hint)
        if section is None:
            kwargs[key] = value  # checked by the section's __post_init__
        elif value is None and section is not hint:
            kwargs[key] = None  # an optional section switched off
        else:
            kwargs[key] = _build(section, value, full)
    return cls(**kwargs)


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Validate a nested mapping against the schema and fill in defaults.

    Raises:
        ConfigError: An unknown key, a value of the wrong type or out of range, a name no
            registry holds, or an option the configured function does not take.
    """
    config: Config = _build(Config, raw, "")
    return config


def config_to_dict(config: Config) -> dict[str, Any]:
    """The config as a nested mapping of plain YAML types."""
    return dataclasses.asdict(config)


def _parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} must look like section.key=value, e.g. optim.lr=0.05")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not a YAML scalar or list: {exc}") from exc
    return key.split("."), value


def _check_path(parts: list[str], value: Any) -> None:
    cls: Any = Config
    hint: Any = Config
    for depth, part in enumerate(parts):
        prefix = ".".join(parts[:depth])
        if prefix in _FREE_FORM:
            return
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            raise _unknown_key(".".join(parts[: depth + 1]), names)
        hint = typing.get_type_hints(cls)[part]
        cls = _section(hint) or hint
        if not dataclasses.is_dataclass(cls) and depth < len(parts) - 1:
            if ".".join(parts[: depth + 1]) not in _FREE_FORM:
                raise ConfigError(f"config key {'.'.join(parts[: depth + 1])!r} has no sub-keys")
    optional_off = value is None and cls is not hint
    if dataclasses.is_dataclass(cls) and not optional_off:
        hint_off = " (or =null to switch it off)" if cls is not hint else ""
        raise ConfigError(
            f"{'.'.join(parts)!r} is a section; set one of its keys instead{hint_off}"
        )


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides to a raw config mapping (in order).

    Args:
        raw: Nested mapping as read from YAML (not modified).
        overrides: Items such as ``"optim.lr=0.05"``; values are parsed as YAML.

    Returns:
        A new mapping with the overrides applied.

    Raises:
        ConfigError: Malformed item or unknown key (the message lists the valid keys).
    """
    out = _merge({}, raw)
    for item in overrides:
        parts, value = _parse_override(item)
        _check_path(parts, value)
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, dict) else {}
            node = node[part]
        node[parts[-1]] = value
    return out


def load_config(spec: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML config (file path or shipped name), resolve ``base:``, apply overrides.

    Args:
        spec: Path to a YAML file, or the name of a shipped config.
        overrides: ``section.key=value`` items applied after the file (timm style).

    Returns:
        The validated config.

    Raises:
        ConfigError: Missing config, invalid YAML, unknown key or wrong value type.
    """
    raw = _read_yaml(find_config(spec))
    return config_from_dict(apply_overrides(raw, overrides))


def config_to_yaml(config: Config) -> str:
    """The config as YAML text, sections in schema order, short lists inline."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=None)


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (loadable again with :func:`load_config`),
    atomically."""
    write_text_atomic(config_to_yaml(config), path)
