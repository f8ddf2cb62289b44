"""``normlab bench layers|models|inference``: its options (:func:`add_arguments`, part of the
``normlab`` parser tree) and its run (:func:`run`)."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Sequence
from typing import Any

import torch

from normlab.bench.inference import bench_inference
from normlab.bench.layers import DEFAULT_SHAPES, bench_layers
from normlab.bench.measure import keep_freed_memory
from normlab.bench.models import bench_models
from normlab.bench.report import inference_table, layers_table, models_table
from normlab.errors import UsageError

__all__ = ["DESCRIPTION", "add_arguments", "build_parser", "main", "run"]

DESCRIPTION = "Time normalizers as ratios to torch's BatchNorm2d measured in the same run."


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``bench``'s sub-commands (``layers``, ``models``, ``inference``) and options."""
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
    if args.json:
        payload = json.dumps(rows, indent=2)
        if args.json == "-":
            print(payload)
        else:
            with open(args.json, "w") as f:
                f.write(payload + "\n")
    return 0
