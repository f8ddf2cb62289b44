"""Data for normlab: readers, built-in data sets, device-resident loaders, mixing.

Everything returns or consumes :class:`ImageData` (uint8 images in memory). Nothing is
downloaded: readers take a local path and say where to get missing files.

Example:
    >>> from normlab.data import create_dataset, DeviceLoader
    >>> train = create_dataset("digits", split="train", style=True)
    >>> loader = DeviceLoader(train, 128, train=True)
    >>> x, y = next(iter(loader))
"""

from .augment import crop_flip, draw_crop_flip
from .cifar import CIFAR10_STATS, CIFAR100_STATS, read_cifar10, read_cifar100
from .coco import CocoSource, coco_sample_root, index_coco
from .coco_sample import write_coco_sample
from .decode import decode_image
from .detection_loader import DetectionLoader
from .digits import DIGITS_SPLITS, digits_split_indices, load_digits_data
from .errors import CorruptDatasetError, DatasetError, MissingDatasetError
from .folder_index import FolderIndex, index_image_folder
from .image_data import ImageData, channel_stats
from .image_folder import IMAGENET_STATS, read_image_folder
from .loader import DeviceLoader, Normalizer
from .mixing import MixedLoader, count_primary_correct, mixed_num_classes, primary_logits
from .mnist import FASHION_MNIST_STATS, MNIST_STATS, read_fashion_mnist, read_idx, read_mnist
from .presets import list_transform_presets, register_transform_preset, transform_preset
from .registry import (
    DatasetInfo,
    create_dataset,
    create_detection_source,
    create_source,
    dataset_info,
    list_datasets,
)
from .sample_folder import write_sample_folder
from .shards import ShardIndex, index_shards, pack_folder
from .streaming import SampleSource, StreamingLoader
from .styles import SEEN_STYLES, UNSEEN_STYLES, StyleSet, render_styles
from .synthetic import SYNTHETIC_SPLITS, make_synthetic
from .transforms import resize, resize_images, with_channels

__all__ = [
    "CIFAR10_STATS",
    "CIFAR100_STATS",
    "DIGITS_SPLITS",
    "FASHION_MNIST_STATS",
    "IMAGENET_STATS",
    "MNIST_STATS",
    "SEEN_STYLES",
    "SYNTHETIC_SPLITS",
    "UNSEEN_STYLES",
    "CocoSource",
    "CorruptDatasetError",
    "DatasetError",
    "DatasetInfo",
    "DetectionLoader",
    "DeviceLoader",
    "FolderIndex",
    "ImageData",
    "MissingDatasetError",
    "MixedLoader",
    "Normalizer",
    "SampleSource",
    "ShardIndex",
    "StreamingLoader",
    "StyleSet",
    "channel_stats",
    "coco_sample_root",
    "count_primary_correct",
    "create_dataset",
    "create_detection_source",
    "create_source",
    "crop_flip",
    "dataset_info",
    "decode_image",
    "digits_split_indices",
    "draw_crop_flip",
    "index_coco",
    "index_image_folder",
    "index_shards",
    "list_datasets",
    "list_transform_presets",
    "load_digits_data",
    "make_synthetic",
    "mixed_num_classes",
    "pack_folder",
    "primary_logits",
    "read_cifar10",
    "read_cifar100",
    "read_fashion_mnist",
    "read_idx",
    "read_image_folder",
    "read_mnist",
    "register_transform_preset",
    "render_styles",
    "resize",
    "resize_images",
    "transform_preset",
    "with_channels",
    "write_coco_sample",
    "write_sample_folder",
]
