"""COCO object detection and instance segmentation (SN paper Sec. 5.2, Tables IV-VI).

The detectors are torchvision's Faster R-CNN and Mask R-CNN with normlab norms per
component (:mod:`normlab.models.detection`); the data is a COCO instances split streamed
by :class:`~normlab.data.detection_loader.DetectionLoader` (``coco`` from ``data.root``, or
the built-in ``coco_sample``; :func:`~normlab.data.registry.create_detection_source`); the
score is COCO AP (:mod:`normlab.tasks.coco_eval`).

- **Training step**: the per-image sampling seeds the loader gives each target are set on
  the detector's RPN and RoI samplers (:func:`~normlab.models.detection.set_sample_seeds`),
  so an image's sampled anchors and RoIs do not depend on its batch or process; the model
  returns torchvision's loss terms, whose sum is minimised. The training row holds
  ``train_loss`` and every term (``train_loss_classifier``, ``train_loss_box_reg``,
  ``train_loss_objectness``, ``train_loss_rpn_box_reg``, ``train_loss_mask``), averaged
  over images.
- **Evaluation**: eval-mode predictions (original image coordinates) scored by
  :class:`~normlab.tasks.coco_eval.CocoEvaluator`: ``box_ap`` ... ``box_apl`` and, for
  Mask R-CNN, ``mask_ap`` ... ``mask_apl``. ``best.pt`` follows ``box_ap``.
- **Epoch record**: the SN importance ratios of each component (backbone, FPN, RPN, box
  head, mask head; SN paper Figs. 10-11) averaged over its SN layers, as
  ``sn_ratios: {component: {"mean": [IN, LN, BN], "var": [IN, LN, BN]}}``.

Whether the detector predicts masks (and so whether targets carry masks) follows the model
name, as in torchvision's detection references (``"mask" in name``); a model that does
otherwise is refused when it is built.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from normlab.data.coco import CocoSource
from normlab.data.detection_loader import DetectionLoader
from normlab.data.registry import create_detection_source, dataset_info
from normlab.models.detection import detector_components, set_sample_seeds
from normlab.norms import norm_summary
from normlab.tasks.classification import PerSampleMetric
from normlab.tasks.coco_eval import CocoEvaluator, ap_keys
from normlab.train.config import Config, DataConfig, ModelConfig
from normlab.train.errors import ConfigError
from normlab.train.factory import Loaders, build_model
from normlab.train.run_folder import LAST, resolve_checkpoint
from normlab.train.task import Forward, StepResult, Task, register_task

__all__ = ["LOSS_TERMS", "DetectionLosses", "DetectionTask", "predicts_masks", "sn_ratios"]

LOSS_TERMS = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")
"""torchvision's Faster R-CNN loss terms (RoI classification and box regression, RPN
objectness and box regression); Mask R-CNN adds ``loss_mask``."""
MASK_TERM = "loss_mask"
RATIO_ORDER = ("in", "ln", "bn")
"""The normalizers of an ``sn_ratios`` entry, in order (SN paper Figs. 10-11)."""


class DetectionLosses(PerSampleMetric):
    """``train_loss`` and ``train_<term>`` for each loss term, averaged over images (each
    batch's value weighted by its number of images).

    Args:
        device: Device of the states.
        terms: The model's loss terms (:data:`LOSS_TERMS`, plus ``loss_mask``).
    """

    def __init__(self, device: torch.device, terms: tuple[str, ...]) -> None:
        names = ("loss", *terms)
        super().__init__(
            device,
            "training",
            {f"train_{name}": (name, 1.0) for name in names},
            {name: torch.float64 for name in names},
        )
        self.terms = terms

    def update(self, batch: Any, output: Any) -> None:
        images = len(batch[0])
        terms = {term: output.output[term] * images for term in self.terms}
        self.add(loss=output.loss * images, seen=images, **terms)


def sn_ratios(model: nn.Module) -> dict[str, dict[str, list[float]]]:
    """SN's mean and variance ratios (Eqn. 5) of each detector component, averaged over
    the component's SN layers (SN paper Figs. 10-11).

    Returns:
        ``{component: {"mean": [IN, LN, BN], "var": [IN, LN, BN]}}`` for the components of
        :func:`~normlab.models.detection.detector_components` that hold SN layers (a
        normalizer a layer does not mix counts 0 for it; a ``gn`` part is left out).
    """
    ratios: dict[str, dict[str, list[float]]] = {}
    for component, module in detector_components(model).items():
        layers = [r for r in norm_summary(module) if "mean_ratios" in r]
        if not layers:
            continue
        totals = {"mean": torch.zeros(len(RATIO_ORDER)), "var": torch.zeros(len(RATIO_ORDER))}
        for record in layers:
            for key in totals:
                for normalizer, ratio in zip(record["normalizers"], record[f"{key}_ratios"]):
                    if normalizer in RATIO_ORDER:
                        totals[key][RATIO_ORDER.index(normalizer)] += ratio
        ratios[component] = {key: (t / len(layers)).tolist() for key, t in totals.items()}
    return ratios


def predicts_masks(model_name: str) -> bool:
    """Whether the registered detector ``model_name`` is an instance-segmentation model."""
    return "mask" in model_name


@register_task("detection")
class DetectionTask(Task):
    """Faster R-CNN / Mask R-CNN training on COCO-format data, scored by COCO AP.

    Args:
        masks: The detector predicts instance masks (targets then carry masks and the
            evaluation scores ``mask_*`` too).
    """

    monitor = "box_ap"
    mode = "max"
    batch_average_stats = False

    def __init__(self, masks: bool = False) -> None:
        self.masks = masks
        self.detector: nn.Module | None = None

    @classmethod
    def from_config(cls, config: Config) -> DetectionTask:
        """The task of a ``task: detection`` config.

        Raises:
            ConfigError: ``model.virtual_batch_size`` (per-process batches stand for the
                paper's GPUs). ``eval.statistics: batch_average`` is refused by the runner
                (:attr:`batch_average_stats`): the SN detectors evaluate with the moving
                average.
        """
        if config.model.virtual_batch_size is not None:
            raise ConfigError(
                "model.virtual_batch_size is not supported for detection (a batch of "
                "images is already a few per process); set model.virtual_batch_size=null"
            )
        return cls(masks=predicts_masks(config.model.name))

    def _source(self, data: DataConfig, split: str, train: bool) -> CocoSource:
        """The indexed ``split`` of ``data.name``, with or without masks (the index cached
        in ``data.cache_dir``; ``data.kwargs`` are the indexer's other options, e.g.
        ``on_bad_annotation``).

        Raises:
            ConfigError: ``data.root`` is missing for data read from disk, or
                ``data.kwargs`` sets what the task decides (``masks``, ``train``).
        """
        info = dataset_info(data.name)
        if info.needs_root and data.root is None:
            raise ConfigError(
                f"data.root is not set: {data.name!r} is read from a local COCO folder "
                "(annotations/instances_<split>.json and <split>/); give it with "
                "--set data.root=PATH"
            )
        fixed = sorted(set(data.kwargs) & {"masks", "train"})
        if fixed:
            raise ConfigError(
                f"data.kwargs.{fixed[0]} is set by the detection task (masks for a *mask* "
                "model, train for the training split); remove it"
            )
        options = dict(data.kwargs)
        if "cache_dir" in info.source_options:
            options.setdefault("cache_dir", data.cache_dir)
        return create_detection_source(
            data.name, data.root, split, **options, masks=self.masks, train=train
        )

    def build_loaders(self, data: DataConfig, *, seed: int, device: torch.device) -> Loaders:
        """Stream ``data.train_split`` (images without annotations left out, flipped when
        ``data.augment``, aspect-ratio grouped) and ``data.test_split`` (every image).

        ``num_classes`` is the categories plus the background (K + 1).
        """
        train_source = self._source(data, data.train_split, True)
        test_source = self._source(data, data.test_split, False)
        if train_source.category_ids != test_source.category_ids:
            raise ConfigError(
                f"{train_source.annotation_file} and {test_source.annotation_file} list "
                "different categories; both splits must have the same categories"
            )

        def stream(source: CocoSource, batch_size: int, train: bool) -> DetectionLoader:
            return DetectionLoader(
                source, batch_size=batch_size, train=train, seed=seed, device=device,
                masks=self.masks, flip_prob=0.5 if data.augment and train else 0.0,
                workers=data.workers, drop_last=data.drop_last if train else False,
                on_bad_file=data.on_bad_file,
            )

        return Loaders(
            stream(train_source, data.batch_size, True),
            stream(test_source, data.eval_batch_size or data.batch_size, False),
            len(train_source.classes) + 1,
            3,
        )

    def build_model(self, model: ModelConfig, *, num_classes: int, in_chans: int) -> nn.Module:
        """The detector ``model.name`` with ``model.norm`` as its backbone norm and
        ``model.kwargs``; ``model.kwargs.pretrained`` may name a classification run folder
        (its ``last.pt``) or a file.

        Raises:
            ConfigError: ``model.num_classes`` is fewer than the data's K + 1, or the model
                does (not) predict masks although its name says otherwise.
        """
        kwargs = dict(model.kwargs)
        if kwargs.get("pretrained") is not None:
            kwargs["pretrained"] = str(resolve_checkpoint(kwargs["pretrained"], LAST))
        net = build_model(dataclasses.replace(model, kwargs=kwargs),
                          num_classes=num_classes, in_chans=in_chans)
        has_mask = "mask_head" in detector_components(net)
        if has_mask != self.masks:
            raise ConfigError(
                f"model {model.name!r} {'predicts' if has_mask else 'does not predict'} masks "
                f"but its name says otherwise; name instance-segmentation detectors *mask*"
            )
        self.detector = net
        return net

    def training_step(self, forward: Forward, batch: Any) -> StepResult:
        """Set each image's sample seed on the detector (the one :meth:`build_model` built,
        else the module ``forward`` is), then sum the loss terms of ``forward(images,
        targets)``."""
        images, targets = batch
        detector = self.detector if self.detector is not None else forward
        if isinstance(detector, nn.Module):
            set_sample_seeds(detector, [int(t["seed"]) for t in targets])
        losses: dict[str, torch.Tensor] = forward(images, targets)
        loss = torch.stack([value.float() for value in losses.values()]).sum()
        return StepResult(loss, {key: value.detach() for key, value in losses.items()})

    def batch_size(self, batch: Any) -> int:
        return len(batch[0])

    def split_batch(self, batch: Any, parts: int) -> list[Any]:
        """``parts`` contiguous micro-batches of ``(images, targets)``."""
        images, targets = batch
        chunks = [c.tolist() for c in torch.arange(len(images)).tensor_split(parts)]
        return [([images[i] for i in c], [targets[i] for i in c]) for c in chunks]

    def train_metric(self, device: torch.device) -> DetectionLosses:
        return DetectionLosses(device, LOSS_TERMS + ((MASK_TERM,) if self.masks else ()))

    def eval_step(self, forward: Forward, batch: Any) -> list[dict[str, torch.Tensor]]:
        """The detector's predictions; none for an empty share of a batch (the last
        evaluation batch may hold fewer images than there are processes)."""
        images, _ = batch
        if not images:
            return []
        predictions: list[dict[str, torch.Tensor]] = forward(images)
        return predictions

    def eval_metric(self, loaders: Loaders, device: torch.device) -> CocoEvaluator:
        source: CocoSource = loaders.test.source
        return CocoEvaluator(source.annotation_file, source.category_ids, masks=self.masks)

    def epoch_record(self, model: nn.Module) -> dict[str, Any]:
        ratios = sn_ratios(model)
        return {"sn_ratios": ratios} if ratios else {}

    def summary(self, row: dict[str, Any], best: float | None) -> dict[str, Any]:
        return {
            **{f"final_{key}": row.get(key) for key in ap_keys(self.masks)},
            "final_train_loss": row.get("train_loss"),
            f"best_{self.monitor}": best,
        }

    def epoch_line(self, row: dict[str, Any], epochs: int, best: float | None) -> str:
        masks = f" mask AP {row['mask_ap']:.2f}" if "mask_ap" in row else ""
        best_text = "-" if best is None else f"{best:.2f}"
        return (
            f"epoch {row['epoch']}/{epochs}  lr {row['lr']:.4g}  train loss "
            f"{row['train_loss']:.4f}  |  box AP {row['box_ap']:.2f} (best {best_text})"
            f"{masks}  {row['time_s']:.1f}s"
        )
