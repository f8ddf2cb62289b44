"""What differs between kinds of training, as tasks on the one engine (:mod:`normlab.train`).

Importing this package registers every task with :func:`normlab.train.task.register_task`:
``classification`` (the default of a run config), ``style_transfer`` and ``detection``
(COCO detection and instance segmentation). A new kind of training (segmentation, video)
is one module here: a :class:`~normlab.train.task.Task` subclass and its metrics, imported
below.
"""

from normlab.tasks.classification import (
    AccuracyMetric,
    ClassificationTask,
    TrainAccuracy,
    evaluate_classifier,
)
from normlab.tasks.coco_eval import CocoEvaluator
from normlab.tasks.detection import DetectionTask, sn_ratios
from normlab.tasks.style_transfer import (
    PerceptualLoss,
    StyleTransferTask,
    gram_matrix,
    train_style_network,
)

__all__ = [
    "AccuracyMetric",
    "ClassificationTask",
    "CocoEvaluator",
    "DetectionTask",
    "PerceptualLoss",
    "StyleTransferTask",
    "TrainAccuracy",
    "evaluate_classifier",
    "gram_matrix",
    "sn_ratios",
    "train_style_network",
]
