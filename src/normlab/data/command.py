"""``normlab data pack|sample|coco-sample``: its options (:func:`add_arguments`, part of
the ``normlab`` parser tree) and its run (:func:`run`).

- ``normlab data pack FOLDER OUT [--split train] [--samples-per-shard N]``: write the
  split's images as WebDataset shards (:func:`~normlab.data.shards.pack_folder`).
- ``normlab data sample OUT [--per-class N] [--size N]``: write a small ImageNet-format
  folder of JPEGs from the built-in digits
  (:func:`~normlab.data.sample_folder.write_sample_folder`).
- ``normlab data coco-sample OUT [--seed N]``: write the built-in detection and
  instance-mask set in the COCO format (:func:`~normlab.data.coco_sample.write_coco_sample`).
"""

from __future__ import annotations

import argparse

from .coco_sample import write_coco_sample
from .folder_index import index_image_folder
from .sample_folder import write_sample_folder
from .shards import pack_folder

__all__ = ["DESCRIPTION", "add_arguments", "run"]

DESCRIPTION = (
    "Prepare data on disk: pack an image folder into WebDataset tar shards, or write a small "
    "ImageNet-format sample folder or COCO-format detection set."
)


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``data``'s actions (``pack``, ``sample``, ``coco-sample``) and their options."""
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    pack = actions.add_parser(
        "pack", help="write an image folder's split as WebDataset shards",
        description="Write FOLDER/SPLIT/<class>/* as OUT/SPLIT-000000.tar ... (each image's "
        "bytes unchanged, <key>.<ext> + <key>.cls per sample) and OUT/SPLIT.json (classes).",
        epilog="example: normlab data pack ~/imagenet ~/imagenet-shards --split val",
    )
    pack.add_argument("folder", help="image folder (FOLDER/SPLIT/<class>/<image>)")
    pack.add_argument("out", help="output folder of the shards")
    pack.add_argument("--split", default="train",
                      help="split sub-folder, or 'all' for FOLDER itself (default train)")
    pack.add_argument("--samples-per-shard", type=_at_least_one, default=1000,
                      help="samples per tar file (default 1000, ~100 MB of ImageNet)")
    pack.add_argument("--seed", type=int, default=0, help="seed of the sample order")
    sample = actions.add_parser(
        "sample", help="write a small ImageNet-format folder of digit JPEGs",
        description="Write OUT/train/<class>/*.JPEG and OUT/val/<class>/*.JPEG: the built-in "
        "digits drawn on photos and textures, for trying the streaming recipes.",
        epilog="example: normlab data sample tiny-imagenet --per-class 30",
    )
    sample.add_argument("out", help="folder to create (absent or empty)")
    sample.add_argument("--per-class", type=_at_least_one,
                        help="images per class and split (default 20)")
    sample.add_argument("--size", type=_at_least_one, help="image height (default 64)")
    sample.add_argument("--seed", type=int, default=0, help="seed of the drawing")
    coco = actions.add_parser(
        "coco-sample", help="write the built-in COCO-format detection and mask set",
        description="Write OUT/annotations/instances_{train,val}.json and OUT/{train,val}/*.jpg: "
        "shapes and digits with exact boxes and masks on photos and textures (200 + 50 images), "
        "the data set coco_sample as files, readable by any COCO tool.",
        epilog="example: normlab data coco-sample ~/coco-sample (then data.name=coco, "
        "data.root=~/coco-sample, data.train_split=train, data.test_split=val)",
    )
    coco.add_argument("out", help="folder to create (absent or empty)")
    coco.add_argument("--seed", type=int, default=0, help="seed of the drawing")


def run(args: argparse.Namespace) -> int:
    """Run ``data pack``, ``data sample`` or ``data coco-sample`` and print what was
    written; returns 0.

    Raises:
        MissingDatasetError, CorruptDatasetError: From indexing or reading the folder.
        FileExistsError: The output already holds shards of the split (pack) or is not an
            empty folder (sample, coco-sample).
    """
    if args.action == "pack":
        source = index_image_folder(args.folder, args.split)
        paths = pack_folder(
            source, args.out, split=args.split, samples_per_shard=args.samples_per_shard,
            seed=args.seed,
        )
        print(f"{len(source)} images of {len(source.classes)} classes -> {len(paths)} shards "
              f"{paths[0].parent}/{args.split}-*.tar")
        return 0
    if args.action == "coco-sample":
        print(f"COCO-format sample {write_coco_sample(args.out, seed=args.seed)}")
        return 0
    options = {k: v for k, v in (("per_class", args.per_class), ("size", args.size)) if v}
    out = write_sample_folder(args.out, seed=args.seed, **options)
    print(f"sample folder {out}")
    return 0
