"""Faster R-CNN (C4 and FPN) and Mask R-CNN (FPN) with normlab normalizers per component.

The detectors of the SN paper's Tables IV-VI (Luo et al. 2019, Sec. 5.2; Detectron's
settings), assembled from ``torchvision.models.detection`` around normlab's ResNet, so every
norm layer comes from normlab's registry (BN, GN, SN, ... and their sync forms through
:func:`normlab.distributed.to_sync`):

- **backbone** (``norm``): the ResNet; ``frozen_norm=True`` is the paper's BN† (running
  statistics and affine frozen by :func:`normlab.freeze_norm`, as torchvision's
  ``FrozenBatchNorm2d``). ``trainable_layers`` freezes the first stages whole (Detectron's
  ``FREEZE_AT``; :func:`~normlab.models.detection_parts.freeze_stages`).
- **C4** (Ren et al. 2015; He et al. 2016): conv1-conv4 (stride 16) feed a one-level RPN
  (anchors 32-512 × ratios 0.5/1/2) and ``RoIAlign`` 14×14; the box head is the ResNet's
  conv5 stage, normalized like the backbone, then average pooling.
- **FPN** (Lin et al. 2017): ``layer1``-``layer4`` into a feature pyramid (``fpn_norm``,
  plus max-pooled P6), torchvision's default anchors and RPN head; the box head is the
  4conv1fc head with ``head_norm`` (GN paper, Wu & He 2018), or torchvision's 2fc head
  (``TwoMLPHead``, no norm) when ``head_norm`` is ``None``; Mask R-CNN (He et al. 2017)
  adds the 4-conv mask head with ``mask_head_norm``.

The model's own ``GeneralizedRCNNTransform`` resizes (``min_size``/``max_size``) and
normalizes with the ImageNet mean and std (torchvision's defaults, the values of
``normlab.data.image_folder.IMAGENET_STATS``), so inputs are ``[0, 1]`` images of any size
and predictions come back in the original image coordinates.

Anchor and RoI sampling use :class:`~normlab.models.detection_parts.SeededSampler`:
:func:`set_sample_seeds` makes each image's samples a function of its own seed.

torchvision is imported when a detector is built, not when this module is imported.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypedDict

from torch import nn

from normlab.errors import ConfigError
from normlab.models.detection_parts import (
    ResNetC4Body,
    ResNetC5Head,
    SeededSampler,
    freeze_stages,
    load_classification_weights,
    norm_factory,
)
from normlab.models.imagenet_resnet import ResNet
from normlab.models.registry import create_model, list_models, register_model
from normlab.norms import NormSpec, freeze_norm

if TYPE_CHECKING:
    from torchvision.models.detection import FasterRCNN, MaskRCNN
    from typing_extensions import Unpack

__all__ = [
    "C4Options",
    "DetectorOptions",
    "FPNOptions",
    "MaskOptions",
    "detector_components",
    "fasterrcnn_c4_resnet50",
    "fasterrcnn_fpn_resnet50",
    "maskrcnn_fpn_resnet50",
    "set_sample_seeds",
]

SAME_AS_HEAD = "head"
"""Value of ``fpn_norm`` / ``mask_head_norm`` meaning "the norm of ``head_norm``"."""

_FPN_LEVELS = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}
_C4_ANCHORS = ((32, 64, 128, 256, 512),), ((0.5, 1.0, 2.0),)
_STAGE_RPN, _STAGE_ROI = 0, 1


class DetectorOptions(TypedDict, total=False):
    """Keyword options every detector takes.

    Keys:
        frozen_norm: BN†: freeze every backbone norm layer (C4: body and res5 head).
        head_norm: norm of the FPN detectors' box head (and, by default, FPN and mask
            head); refused by C4 (its box head is the backbone's res5), None there.
        norm_kwargs: options of every norm layer (backbone and heads).
        backbone: a registered v1 ImageNet ResNet (``resnet50``; ``resnet18`` for tiny runs).
        pretrained: a file with the classification ResNet's weights
            (:func:`~normlab.models.detection_parts.load_classification_weights`).
        trainable_layers: stages trained, 0-5 (``None``: 3 when ``pretrained``, else 5).
        min_size, max_size: the transform's resize (shorter side, longer side at most).
        rpn_* / box_*: torchvision's ``FasterRCNN`` arguments of the same names
            (defaults as torchvision's).
    """

    frozen_norm: bool
    head_norm: str | None
    norm_kwargs: Mapping[str, Any] | None
    backbone: str
    pretrained: str | None
    trainable_layers: int | None
    min_size: int
    max_size: int
    rpn_pre_nms_top_n_train: int
    rpn_pre_nms_top_n_test: int
    rpn_post_nms_top_n_train: int
    rpn_post_nms_top_n_test: int
    rpn_nms_thresh: float
    rpn_fg_iou_thresh: float
    rpn_bg_iou_thresh: float
    rpn_batch_size_per_image: int
    rpn_positive_fraction: float
    rpn_score_thresh: float
    box_score_thresh: float
    box_nms_thresh: float
    box_detections_per_img: int
    box_fg_iou_thresh: float
    box_bg_iou_thresh: float
    box_batch_size_per_image: int
    box_positive_fraction: float


class C4Options(DetectorOptions, total=False):
    """Keyword options of :func:`fasterrcnn_c4_resnet50`: :class:`DetectorOptions` and

    Keys:
        roi_size: the RoIAlign output side fed to res5, which halves it (14, Detectron's;
            a smaller side makes the res5 head cheaper for CPU-sized runs).
    """

    roi_size: int


class FPNOptions(DetectorOptions, total=False):
    """Keyword options of :func:`fasterrcnn_fpn_resnet50`: :class:`DetectorOptions` and

    Keys:
        fpn_norm: norm of the FPN convolutions (``"head"``, the default: ``head_norm``).
        fpn_channels: FPN width, also the width of the box head's and mask head's convs.
        representation_size: width of the box head's fully connected layers.
        head_convs: convolutions of the box head with ``head_norm`` set (4conv1fc: 4).
    """

    fpn_norm: str | None
    fpn_channels: int
    representation_size: int
    head_convs: int


class MaskOptions(FPNOptions, total=False):
    """Keyword options of :func:`maskrcnn_fpn_resnet50`: :class:`FPNOptions` and

    Keys:
        mask_head_norm: norm of the mask head's convs (``"head"``, the default: ``head_norm``).
        mask_convs: convolutions of the mask head (4).
    """

    mask_head_norm: str | None
    mask_convs: int


_DEFAULTS: dict[str, Any] = {
    "frozen_norm": False, "head_norm": None, "norm_kwargs": None, "backbone": "resnet50",
    "pretrained": None, "trainable_layers": None, "min_size": 800, "max_size": 1333, "roi_size": 14,
    "fpn_norm": SAME_AS_HEAD, "mask_head_norm": SAME_AS_HEAD, "fpn_channels": 256,
    "representation_size": 1024, "head_convs": 4, "mask_convs": 4,
}
_TORCHVISION_INTS = (
    "rpn_pre_nms_top_n_train", "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_train",
    "rpn_post_nms_top_n_test", "rpn_batch_size_per_image", "box_detections_per_img",
    "box_batch_size_per_image",
)
_POSITIVE_INTS = (*_TORCHVISION_INTS, "min_size", "max_size", "roi_size", "fpn_channels",
                  "representation_size", "head_convs", "mask_convs")
_FRACTIONS = ("rpn_positive_fraction", "box_positive_fraction")
_UNIT_FLOATS = (
    "rpn_nms_thresh", "rpn_fg_iou_thresh", "rpn_bg_iou_thresh", "rpn_score_thresh",
    "box_score_thresh", "box_nms_thresh", "box_fg_iou_thresh", "box_bg_iou_thresh",
)
_TORCHVISION = (*_TORCHVISION_INTS, *_FRACTIONS, *_UNIT_FLOATS)


def _torchvision() -> Any:
    """The ``torchvision`` package with its detection models loaded, imported when a
    detector is built (so that ``import normlab`` does not pay for torchvision's import)."""
    try:
        # optional dependency: torchvision (a dependency of the models layer, imported lazily)
        import torchvision.models.detection
    except ImportError as error:
        raise ImportError(
            "the detection models need torchvision; install it with `pip install normlab[vision]`"
        ) from error
    return torchvision


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_value(model: str, key: str, value: Any) -> None:
    """Raise a one-line ConfigError for an option value out of its type or range."""
    expected = None
    if key in _POSITIVE_INTS and not (_is_int(value) and value >= 1):
        expected = "an int >= 1"
    elif key in _FRACTIONS and not (
        isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1
    ):
        expected = "a number in (0, 1]"
    elif key in _UNIT_FLOATS and not (
        isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1
    ):
        expected = "a number in [0, 1]"
    elif key == "frozen_norm" and not isinstance(value, bool):
        expected = "true or false"
    elif key == "trainable_layers" and not (value is None or (_is_int(value) and 0 <= value <= 5)):
        expected = "an int in 0..5 (stages trained, Detectron's FREEZE_AT) or null"
    elif key in ("head_norm", "fpn_norm", "mask_head_norm") and not (
        value is None or isinstance(value, str)
    ):
        expected = "a norm name or null"
    elif key == "backbone" and not isinstance(value, str):
        expected = "a model name"
    elif key == "pretrained" and not (value is None or isinstance(value, (str, os.PathLike))):
        expected = "a file path or null"
    elif key == "norm_kwargs" and not (value is None or isinstance(value, Mapping)):
        expected = "a mapping of norm options or null"
    if expected is not None:
        raise ConfigError(f"{model}: {key} must be {expected}, got {value!r}")


def _options(
    model: str, allowed: type, given: Mapping[str, Any], num_classes: int, in_chans: int
) -> dict[str, Any]:
    """``given`` checked against the TypedDict ``allowed`` and merged over the defaults
    (``num_classes`` and ``in_chans`` checked too)."""
    if not (_is_int(num_classes) and num_classes >= 2):
        raise ConfigError(
            f"{model}: num_classes counts the background too (COCO: 81, or 91 with "
            f"torchvision's category ids); it must be an int >= 2, got {num_classes!r}"
        )
    if in_chans != 3:
        raise ConfigError(
            f"{model} reads RGB images (normalized with the ImageNet mean/std); "
            f"in_chans must be 3, got {in_chans}"
        )
    valid = list(allowed.__annotations__)
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise ConfigError(
            f"{model} has no option {unknown[0]!r}; valid options: {', '.join(valid)}"
        )
    for key, value in given.items():
        _check_value(model, key, value)
    options = {k: v for k, v in _DEFAULTS.items() if k in valid}
    options.update(given)
    options["norm_kwargs"] = dict(options["norm_kwargs"] or {})
    if options["min_size"] > options["max_size"]:
        raise ConfigError(
            f"{model}: min_size {options['min_size']} exceeds max_size {options['max_size']}"
        )
    return options


def _backbone(model: str, norm: NormSpec, options: Mapping[str, Any]) -> ResNet:
    """The normlab ResNet with ``norm``, pretrained weights loaded, stages and norms frozen."""
    if isinstance(norm, str):
        norm_factory(norm, options["norm_kwargs"], f"{model}: norm")
    name = options["backbone"]
    if name not in list_models("imagenet"):
        raise ConfigError(
            f"{model}: backbone {name!r} is not a registered ImageNet network; valid: "
            f"{', '.join(list_models('imagenet'))}"
        )
    resnet = create_model(name, norm=norm, norm_kwargs=options["norm_kwargs"])
    if not isinstance(resnet, ResNet) or resnet.bn_final is not None:
        raise ConfigError(
            f"{model}: backbone {name!r} is not a v1 ResNet (pre-activation nets have no "
            "normalized stage outputs); use resnet18/34/50/101/152 or resnext50_32x4d"
        )
    if options["pretrained"] is not None:
        what = f"{name} with norm {norm!r}"
        load_classification_weights(resnet, options["pretrained"], what)
    trainable = options["trainable_layers"]
    if trainable is None:
        trainable = 3 if options["pretrained"] is not None else 5
    freeze_stages(resnet, trainable)
    if options["frozen_norm"]:
        freeze_norm(resnet)
    return resnet


def _torchvision_kwargs(options: Mapping[str, Any]) -> dict[str, Any]:
    chosen = {k: options[k] for k in _TORCHVISION if k in options}
    return {"min_size": options["min_size"], "max_size": options["max_size"], **chosen}


def _seed_samplers(detector: Any) -> None:
    """Swap torchvision's samplers of the RPN and RoI heads for seeded ones."""
    for module, stage in ((detector.rpn, _STAGE_RPN), (detector.roi_heads, _STAGE_ROI)):
        old = module.fg_bg_sampler
        module.fg_bg_sampler = SeededSampler(
            old.batch_size_per_image, old.positive_fraction, stage
        )


def _head_norms(model: str, options: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """``norm_layer`` callables of the FPN / heads (``"head"`` resolved to ``head_norm``)."""
    layers = {}
    for key in (k for k in keys if k in options):
        norm = options[key]
        if key != "head_norm" and norm == SAME_AS_HEAD:
            norm = options["head_norm"]
        layers[key] = norm_factory(norm, options["norm_kwargs"], f"{model}: {key}")
    return layers


def _fpn_detector(
    model: str, num_classes: int, norm: NormSpec, in_chans: int, allowed: type,
    given: Mapping[str, Any],
) -> nn.Module:
    """An FPN detector: Mask R-CNN when ``allowed`` has the mask head's options, else
    Faster R-CNN (``given``: the options the caller set, checked against ``allowed``)."""
    tv = _torchvision()
    detection, rcnn = tv.models.detection, tv.models.detection.faster_rcnn
    mask_rcnn = tv.models.detection.mask_rcnn
    options = _options(model, allowed, given, num_classes, in_chans)
    norms = _head_norms(model, options, ("head_norm", "fpn_norm", "mask_head_norm"))
    if norms["head_norm"] is None and "head_convs" in given:
        raise ConfigError(
            f"{model}: head_convs sets the 4conv1fc box head, which head_norm selects; "
            "without head_norm the box head is the 2fc head (set head_norm or drop head_convs)"
        )
    resnet = _backbone(model, norm, options)
    width, size = options["fpn_channels"], options["representation_size"]
    stage2 = resnet.num_features // 8
    backbone = detection.backbone_utils.BackboneWithFPN(
        resnet, _FPN_LEVELS, [stage2 * 2**i for i in range(4)], width,
        extra_blocks=tv.ops.feature_pyramid_network.LastLevelMaxPool(),
        norm_layer=norms["fpn_norm"],
    )
    box_head: nn.Module
    if norms["head_norm"] is None:
        box_head = rcnn.TwoMLPHead(width * 7 * 7, size)
    else:
        box_head = rcnn.FastRCNNConvFCHead(
            (width, 7, 7), [width] * options["head_convs"], [size], norm_layer=norms["head_norm"]
        )
    heads = {"box_head": box_head, "box_predictor": rcnn.FastRCNNPredictor(size, num_classes)}
    if "mask_head_norm" not in options:
        detector = detection.FasterRCNN(backbone, None, **heads, **_torchvision_kwargs(options))
    else:
        mask_head = mask_rcnn.MaskRCNNHeads(
            width, [width] * options["mask_convs"], 1, norm_layer=norms["mask_head_norm"]
        )
        detector = detection.MaskRCNN(
            backbone, None, **heads, mask_head=mask_head,
            mask_predictor=mask_rcnn.MaskRCNNPredictor(width, width, num_classes),
            **_torchvision_kwargs(options),
        )
    _seed_samplers(detector)
    return detector


@register_model(
    family="detection", input_size=(3, 800, 800), num_classes=91, tables=("SN Table IV",)
)
def fasterrcnn_c4_resnet50(
    num_classes: int = 91, norm: NormSpec = "bn", in_chans: int = 3, **options: Unpack[C4Options]
) -> FasterRCNN:
    """Faster R-CNN, ResNet-50 C4 (conv1-4 body, conv5 box head), normlab norms (SN Table IV).

    Args:
        num_classes: classes including the background (COCO: 80 + 1; 91 ids as torchvision).
        norm: backbone norm, also the res5 box head's (a registry name, class or partial).
        in_chans: must be 3 (RGB).
        **options: :class:`C4Options`.

    Returns:
        A torchvision ``FasterRCNN``: ``model(images, targets)`` in training gives the loss
        dict (``loss_classifier``, ``loss_box_reg``, ``loss_objectness``,
        ``loss_rpn_box_reg``); ``model(images)`` in eval gives per image ``boxes`` (R, 4)
        xyxy in the input's pixels, ``labels`` (R,), ``scores`` (R,).

    Raises:
        ConfigError: an unknown option, a value out of range, or ``head_norm`` set.
        CheckpointError: ``pretrained`` is missing, unreadable or does not fit.

    Shape:
        - Input: a list of N images ``(3, H_i, W_i)`` in ``[0, 1]`` (any sizes; resized
          inside to ``min_size``/``max_size``), in training also N target dicts
          (``boxes`` (R_i, 4) xyxy pixels, ``labels`` (R_i,) in 1..num_classes-1).
        - Output: the loss dict (training), or N prediction dicts (eval).
    """
    model = "fasterrcnn_c4_resnet50"
    opts = _options(model, C4Options, options, num_classes, in_chans)
    if opts["head_norm"] is not None:
        raise ConfigError(
            f"{model}: head_norm is not an option of the C4 detector: its box head is the "
            "backbone's res5 stage, normalized like the backbone (set norm / frozen_norm)"
        )
    resnet = _backbone(model, norm, opts)
    body, head = ResNetC4Body(resnet), ResNetC5Head(resnet)
    tv = _torchvision()
    detection = tv.models.detection
    anchors = detection.anchor_utils.AnchorGenerator(*_C4_ANCHORS)
    detector: FasterRCNN = detection.FasterRCNN(
        body,
        None,
        rpn_anchor_generator=anchors,
        rpn_head=detection.rpn.RPNHead(body.out_channels, anchors.num_anchors_per_location()[0]),
        box_roi_pool=tv.ops.MultiScaleRoIAlign(["0"], opts["roi_size"], 2),
        box_head=head,
        box_predictor=detection.faster_rcnn.FastRCNNPredictor(head.out_channels, num_classes),
        **_torchvision_kwargs(opts),
    )
    _seed_samplers(detector)
    return detector


@register_model(
    family="detection", input_size=(3, 800, 800), num_classes=91, tables=("SN Table V",)
)
def fasterrcnn_fpn_resnet50(
    num_classes: int = 91, norm: NormSpec = "bn", in_chans: int = 3, **options: Unpack[FPNOptions]
) -> FasterRCNN:
    """Faster R-CNN + FPN, ResNet-50, normlab norms per component (SN Table V).

    Arguments, outputs and errors as :func:`fasterrcnn_c4_resnet50`, with the options of
    :class:`FPNOptions` (``head_norm`` allowed: the box head's and, by default, the FPN's).
    """
    detector: FasterRCNN = _fpn_detector(
        "fasterrcnn_fpn_resnet50", num_classes, norm, in_chans, FPNOptions, options
    )
    return detector


@register_model(
    family="detection", input_size=(3, 800, 800), num_classes=91, tables=("SN Table VI",)
)
def maskrcnn_fpn_resnet50(
    num_classes: int = 91, norm: NormSpec = "bn", in_chans: int = 3, **options: Unpack[MaskOptions]
) -> MaskRCNN:
    """Mask R-CNN + FPN, ResNet-50, normlab norms per component (SN Table VI).

    As :func:`fasterrcnn_fpn_resnet50`, with the options of :class:`MaskOptions`; adds
    ``loss_mask`` in training and per-detection ``masks`` (R, 1, H, W) probabilities in
    the input's pixels to the predictions.
    """
    detector: MaskRCNN = _fpn_detector(
        "maskrcnn_fpn_resnet50", num_classes, norm, in_chans, MaskOptions, options
    )
    return detector


def detector_components(model: nn.Module) -> dict[str, nn.Module]:
    """The parts of a detector whose norms the SN paper reports separately (Figs. 10-11).

    Returns:
        In order, those that exist: ``backbone`` (the ResNet body; C4: conv1-conv4),
        ``fpn``, ``rpn``, ``box_head`` (C4: the res5 head; FPN: 4conv1fc or 2fc) and
        ``mask_head``.

    Raises:
        TypeError: ``model`` is not a torchvision two-stage detector (unwrap DDP first).
    """
    if not all(hasattr(model, a) for a in ("backbone", "rpn", "roi_heads")):
        raise TypeError(
            f"detector_components expects a torchvision R-CNN detector, got "
            f"{type(model).__name__} (pass the model, not its DDP wrapper)"
        )
    detector: Any = model
    backbone = detector.backbone
    fpn = getattr(backbone, "fpn", None)
    parts: dict[str, nn.Module] = {"backbone": backbone.body if fpn is not None else backbone}
    if fpn is not None:
        parts["fpn"] = fpn
    parts["rpn"] = detector.rpn
    parts["box_head"] = detector.roi_heads.box_head
    mask_head = getattr(detector.roi_heads, "mask_head", None)
    if mask_head is not None:
        parts["mask_head"] = mask_head
    return parts


def set_sample_seeds(model: nn.Module, seeds: Sequence[int] | None) -> None:
    """Seed the anchor (RPN) and RoI sampling of the next training forwards, per image.

    Image ``i`` of the batch gets its positive/negative samples from a generator seeded
    with ``seeds[i]`` (and a fixed offset per stage), so they do not depend on its batch
    position or process. The seeds hold until the next call; ``None`` returns to torch's
    global generator (torchvision's behaviour).

    Args:
        model: a detector built here (or a wrapper holding one, e.g. DDP).
        seeds: one int per image of the next batch, or ``None``.

    Raises:
        TypeError: ``model`` holds no seeded sampler, or a seed is not an int.
    """
    if seeds is not None and not all(_is_int(s) for s in seeds):
        raise TypeError(f"sample seeds must be ints, got {list(seeds)!r}")
    found = (getattr(m, "fg_bg_sampler", None) for m in model.modules())
    samplers = [s for s in found if isinstance(s, SeededSampler)]
    if not samplers:
        raise TypeError(
            f"{type(model).__name__} has no seeded sampler; build the detector with "
            "normlab's detection constructors (create_model('fasterrcnn_fpn_resnet50', ...))"
        )
    for sampler in samplers:
        sampler.seeds = None if seeds is None else tuple(int(s) for s in seeds)
