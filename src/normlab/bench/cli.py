"""``normlab bench layers|models|inference|data``: its options (:func:`add_arguments`, part
of the ``normlab`` parser tree) and its run (:func:`run`)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch

from normlab.bench.data import bench_data
from normlab.bench.inference import bench_inference
from normlab.bench.layers import DEFAULT_SHAPES, bench_layers
from normlab.bench.measure import keep_freed_memory
from normlab.bench.models import bench_models
from normlab.bench.report import data_table, inference_table, layers_table, models_table
from normlab.data.presets import list_transform_presets
from normlab.errors import UsageError

__all__ = ["DESCRIPTION", "add_arguments", "build_parser", "main", "run"]

DESCRIPTION = (
    "Time normalizers as ratios to torch's BatchNorm2d measured in the same run; time the "
    "streaming data pipeline against torchvision's ImageFolder."
)


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.lower().replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"shape must look like 128,16,32,32, got {text!r}"
        ) from None
    if len(shape) != 4:
        raise argparse.ArgumentTypeError(f"shape needs 4 sizes (N,C,H,W), got {text!r}")
    return shape


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum``."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def _add_data(sub: Any) -> None:
    """``bench data``'s options."""
    data = sub.add_parser(
        "data", help="data-pipeline benchmark",
        description="Images/s and peak memory of the streaming image pipeline against "
        "torchvision's ImageFolder + DataLoader with the same transforms and workers.",
        epilog="example: normlab bench data --workers 2 --images 5000 --json data.json",
    )
    data.add_argument("--folder", help="image folder with a train split to reuse (or to "
                      "generate into and keep); default: a temporary generated one")
    data.add_argument("--images", type=_at_least(1), default=5000,
                      help="JPEGs to generate (default 5000)")
    data.add_argument("--workers", type=_at_least(0), default=2,
                      help="DataLoader workers of each pipeline (default 2)")
    data.add_argument("--batch-size", type=_at_least(1), default=64)
    data.add_argument("--size", type=_at_least(1), default=224, help="output side (default 224)")
    data.add_argument("--preset", default="imagenet_train",
                      choices=[p for p in list_transform_presets() if p != "none"])
    data.add_argument("--rounds", type=_at_least(1), default=6,
                      help="turns of each pipeline, one epoch's batches in all (default 6)")
    data.add_argument("--device", default="cpu", help="cpu or cuda")
    data.add_argument("--full-decode", action="store_true",
                      help="also time the streaming pipeline without reduced-size decoding")
    data.add_argument("--index-files", type=_at_least(0), default=200_000,
                      help="empty files for the index-memory measurement (0: skip)")
    data.add_argument("--json", metavar="PATH", help="also write results as JSON ('-': stdout)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``bench``'s sub-commands (``layers``, ``models``, ``inference``, ``data``) and
    options."""
    sub = parser.add_subparsers(dest="what", required=True, metavar="BENCH")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--norms", nargs="+", help="registry names (default: all)")
    common.add_argument("--repeats", type=int, default=10, help="timed rounds (default 10)")
    common.add_argument("--threads", type=int, help="torch intra-op threads")
    common.add_argument("--device", default="cpu", help="cpu or cuda")
    common.add_argument("--json", metavar="PATH", help="also write results as JSON ('-': stdout)")
    common.add_argument(
        "--default-malloc", action="store_true",
        help="leave glibc malloc as it is (by default the bench keeps freed memory mapped, "
        "which removes page-fault noise from CPU timings)",
    )
    layers = sub.add_parser(
        "layers", parents=[common], help="layer benchmark",
        description="Forward and backward time of each norm's layer against BatchNorm2d.",
        epilog="example: normlab bench layers --norms bn iebn --shapes 32,64,32,32",
    )
    layers.add_argument("--shapes", nargs="+", type=_shape, default=list(DEFAULT_SHAPES),
                        help="N,C,H,W shapes (default: the four of issue #6)")
    layers.add_argument("--compile", action="store_true", help="also time torch.compile")
    layers.add_argument("--peak-gbps", type=float,
                        help="the GPU's peak memory bandwidth (default: read from the device)")
    models = sub.add_parser(
        "models", parents=[common], help="training-step benchmark",
        description="Training-step time of a network with each norm against BatchNorm2d.",
        epilog="example: normlab bench models --model resnet20 --batch-size 32 --repeats 3",
    )
    models.add_argument("--model", default="resnet164")
    models.add_argument("--batch-size", type=int, default=64)
    inference = sub.add_parser(
        "inference", parents=[common],
        help="eval forward per norm, unfused and after fuse_for_inference",
        epilog="example: normlab bench inference --model resnet50 --device cuda",
    )
    inference.add_argument("--model", default="resnet50")
    inference.add_argument("--batch-size", type=int, default=8)
    inference.add_argument("--image-size", type=int, default=224)
    _add_data(sub)


def build_parser() -> argparse.ArgumentParser:
    """A parser of ``bench``'s options alone (``normlab bench`` is the command line)."""
    parser = argparse.ArgumentParser(prog="normlab bench", description=DESCRIPTION)
    add_arguments(parser)
    return parser


def _machine(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``bench``'s options alone and run it (for scripts; prefer ``normlab bench``)."""
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run the benchmark ``args.what`` and print its table; returns the exit status.

    Raises:
        UsageError: ``--device cuda`` without a CUDA device.
    """
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda but no CUDA device is available")
    if args.what == "data":
        return _run_data(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    steady = not args.default_malloc and args.device == "cpu" and keep_freed_memory()
    print(
        f"torch {torch.__version__}, {_machine(args.device)}"
        + (", malloc keeps freed memory" if steady else "")
        + "\n",
        flush=True,
    )
    rows: list[dict[str, Any]]
    if args.what == "layers":
        layers = bench_layers(
            args.shapes, args.norms, repeats=args.repeats, compile_layers=args.compile,
            device=args.device, peak_gbps=args.peak_gbps,
            progress=lambda m: print(f"... {m}", file=sys.stderr, flush=True),
        )
        print(layers_table(layers))
        rows = [r.as_dict() for r in layers]
    elif args.what == "inference":
        inference = bench_inference(
            args.model, args.norms, batch_size=args.batch_size, image_size=args.image_size,
            repeats=args.repeats, device=args.device,
        )
        print(inference_table(inference))
        rows = [r.as_dict() for r in inference]
    else:
        models = bench_models(
            args.model, args.norms, batch_size=args.batch_size, repeats=args.repeats,
            device=args.device,
        )
        print(models_table(models))
        rows = [r.as_dict() for r in models]
    _write_json(args.json, rows)
    return 0


def _write_json(path: str | None, rows: list[dict[str, Any]]) -> None:
    if path:
        payload = json.dumps(rows, indent=2)
        if path == "-":
            print(payload)
        else:
            with open(path, "w") as f:
                f.write(payload + "\n")


def _run_data(args: argparse.Namespace) -> int:
    print(f"torch {torch.__version__}, {_machine(args.device)}, {os.cpu_count()} CPUs\n",
          flush=True)
    result = bench_data(
        args.folder, images=args.images, workers=args.workers, batch_size=args.batch_size,
        size=args.size, preset=args.preset, rounds=args.rounds, device=args.device,
        full_decode=args.full_decode, index_files=args.index_files,
        progress=lambda m: print(f"... {m}", file=sys.stderr, flush=True),
    )
    print(data_table(result))
    _write_json(args.json, [result.as_dict()])
    return 0
