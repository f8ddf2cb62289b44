"""The papers' networks with pluggable normalization, and the model registry.

Every constructor takes ``num_classes`` (classifiers), ``in_chans``, ``norm`` (registry
name, class or ``functools.partial``, used at every normalization position),
``norm_downsample`` (norm of projection shortcuts, default ``norm``), ``se_reduction``
(``None`` or the reduction of an SE block in every residual unit), ``last_gamma``
(zero-init the last norm of each residual unit) and ``norm_kwargs``.

>>> from normlab.models import create_model
>>> net = create_model("resnet164", num_classes=100, norm="iebn", norm_downsample="bn")
"""

from normlab.models.alexnet import CifarAlexNet, alexnet
from normlab.models.blocks import Norms, SqueezeExcite
from normlab.models.cifar_resnet import (
    CifarResNet,
    preresnet110,
    preresnet164,
    resnet20,
    resnet32,
    resnet44,
    resnet56,
    resnet110,
    resnet164,
    resnext29_8x64d,
    wrn28_10,
)
from normlab.models.densenet import DenseNet, densenet100_12
from normlab.models.detection import (
    detector_components,
    fasterrcnn_c4_resnet50,
    fasterrcnn_fpn_resnet50,
    maskrcnn_fpn_resnet50,
    set_sample_seeds,
)
from normlab.models.imagenet_resnet import (
    ResNet,
    resnet18,
    resnet34,
    resnet50,
    resnet50v2,
    resnet101,
    resnet101v2,
    resnet152,
    resnext50_32x4d,
)
from normlab.models.registry import ModelInfo, create_model, list_models, model_info
from normlab.models.style import TransformerNet, transformer_net
from normlab.models.vgg import (
    CifarVGG,
    VGG16Features,
    load_vgg16_features,
    vgg16_features,
    vgg19,
)

__all__ = [
    "CifarAlexNet",
    "CifarResNet",
    "CifarVGG",
    "DenseNet",
    "ModelInfo",
    "Norms",
    "ResNet",
    "SqueezeExcite",
    "TransformerNet",
    "VGG16Features",
    "alexnet",
    "create_model",
    "densenet100_12",
    "detector_components",
    "fasterrcnn_c4_resnet50",
    "fasterrcnn_fpn_resnet50",
    "list_models",
    "load_vgg16_features",
    "maskrcnn_fpn_resnet50",
    "model_info",
    "preresnet110",
    "preresnet164",
    "resnet18",
    "resnet20",
    "resnet32",
    "resnet34",
    "resnet44",
    "resnet50",
    "resnet50v2",
    "resnet56",
    "resnet101",
    "resnet101v2",
    "resnet110",
    "resnet152",
    "resnet164",
    "resnext29_8x64d",
    "resnext50_32x4d",
    "set_sample_seeds",
    "transformer_net",
    "vgg16_features",
    "vgg19",
    "wrn28_10",
]
