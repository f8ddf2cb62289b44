"""``normlab style``: fast style transfer with every norm, as in the papers' stylization figures.

One :class:`~normlab.models.TransformerNet` per norm is trained from the same seed on the
same content batches against one style image
(:mod:`normlab.tasks.style_transfer`). The report
draws the content and style losses against the step — the IEBN paper's Figs. 3 and 5 (BN,
IN, SE, IEBN), the SN paper's Figs. 15 and 16a (IN, BN, SN), BIN's comparison (IN, BIN) —
and a grid of held-out images stylized by each network (IEBN Fig. 2).

Built-in data: scikit-image's bundled colour photos as content (``astronaut`` held out for
the images), its ``immunohistochemistry`` sample as the style. The loss network is VGG-16;
its ImageNet weights are a local file (``--vgg-weights``, torchvision's ``vgg16`` state
dict). Without it a VGG-16 with seeded random weights computes the losses: the comparison
of the norms' optimisation still holds, the pictures are texture transfer rather than the
papers' artistic stylization, and the report says so.

Every norm's result is written atomically under ``norms/`` as soon as it finishes, so a
re-run skips finished norms; ``settings.json`` pins what the numbers mean.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from normlab.data.photos import (
    BUILTIN_CONTENT,
    BUILTIN_STYLE,
    content_batches,
    load_photo,
    random_crops,
)
from normlab.data.seeding import seeded_generator
from normlab.models import VGG16Features, create_model
from normlab.norms import post_step
from normlab.tasks.style_transfer import PerceptualLoss, loss_network, train_style_network
from normlab.train.records import pin_settings, write_json, write_text_atomic
from normlab.train.run_folder import atomic_save

__all__ = [
    "DESCRIPTION",
    "NORMS",
    "StyleSettings",
    "add_arguments",
    "main",
    "run",
    "run_style_transfer",
    "style_report",
]

NORMS = ("in", "bn", "se", "iebn", "sn", "bin")
"""Norms compared; ``se`` is BN with an SE module in every residual block (IEBN's baseline)."""
FIGURES = {
    "IEBN Figs. 3, 5": ("bn", "in", "se", "iebn"),
    "SN Figs. 15, 16a": ("in", "bn", "sn"),
    "BIN, style transfer": ("in", "bin"),
}
HELD_OUT = "astronaut"
TEST_IMAGES = 3


@dataclass(frozen=True)
class StyleSettings:
    """Everything that fixes the results (written to ``settings.json``)."""

    size: int = 64
    batch_size: int = 4
    steps: int = 200
    lr: float = 1e-3
    style: str = BUILTIN_STYLE
    content: tuple[str, ...] = BUILTIN_CONTENT
    vgg_weights: str | None = None
    content_weight: float = 1.0
    style_weight: float = 1e5
    tv_weight: float = 1e-6
    seed: int = 0


def _network(norm: str) -> torch.nn.Module:
    if norm == "se":
        return create_model("transformer_net", norm="bn", se_reduction=16)
    return create_model("transformer_net", norm=norm)


def _vgg(settings: StyleSettings) -> VGG16Features:
    return loss_network(settings.vgg_weights, settings.seed)


def _test_crops(settings: StyleSettings) -> torch.Tensor:
    return random_crops([load_photo(HELD_OUT)], TEST_IMAGES, settings.size,
                        seeded_generator(settings.seed, 1))


def _train_one(
    norm: str, settings: StyleSettings, folder: Path, progress: bool
) -> dict[str, Any]:
    photos = [load_photo(name) for name in settings.content]
    style = load_photo(settings.style)[None]
    loss = PerceptualLoss(_vgg(settings), style, content_weight=settings.content_weight,
                          style_weight=settings.style_weight, tv_weight=settings.tv_weight)
    torch.manual_seed(settings.seed)
    model = _network(norm)
    history = train_style_network(
        model, content_batches(photos, settings.batch_size, settings.size, settings.seed),
        loss, steps=settings.steps, lr=settings.lr, post_step=post_step, progress=progress,
    )
    model.eval()
    with torch.no_grad():
        outputs = model(_test_crops(settings)).clamp(0, 1)
    atomic_save(outputs, folder / f"{norm}-images.pt")
    result = {"norm": norm, "history": history}
    write_json(result, folder / f"{norm}.json")
    return result


def run_style_transfer(
    settings: StyleSettings,
    norms: Sequence[str] = NORMS,
    out: str | Path = "style",
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Train one network per norm (skipping finished ones), then write the report.

    Returns:
        The path of ``report.md``.

    Raises:
        ValueError: ``out`` holds results made with other settings, or an unknown norm.
    """
    unknown = [n for n in norms if n not in NORMS]
    if unknown:
        raise ValueError(f"unknown norms {unknown}; choose from {', '.join(NORMS)}")
    out = Path(out)
    folder = out / "norms"
    folder.mkdir(parents=True, exist_ok=True)
    pin_settings(asdict(settings), out / "settings.json", "style-transfer results")
    for index, norm in enumerate(norms, start=1):
        if (folder / f"{norm}.json").is_file():
            log(f"[{index}/{len(norms)}] {norm}: done, skipped")
            continue
        log(f"[{index}/{len(norms)}] {norm}: training {settings.steps} steps")
        result = _train_one(norm, settings, folder, progress)
        last = _tail_mean(result["history"])
        log(f"[{index}/{len(norms)}] {norm}: content {last['content']:.4g}, "
            f"style {last['style']:.4g}")
    return style_report(out, settings)


def _tail_mean(history: Sequence[dict[str, float]]) -> dict[str, float]:
    """Losses averaged over the last tenth of the steps (at least one)."""
    tail = history[-max(1, len(history) // 10):]
    return {k: statistics.fmean(r[k] for r in tail) for k in ("content", "style", "total")}


def style_report(out: str | Path, settings: StyleSettings) -> Path:
    """``report.md``, ``losses.png`` and ``images.png`` from the finished norms in ``out``."""
    from normlab.report.figures import style_images_figure, style_losses_figure

    out = Path(out)
    results = {}
    for norm in NORMS:
        path = out / "norms" / f"{norm}.json"
        if path.is_file():
            results[norm] = json.loads(path.read_text())["history"]
    style_losses_figure(results, out / "losses.png")
    images = {
        n: torch.load(out / "norms" / f"{n}-images.pt", weights_only=True) for n in results
    }
    style_images_figure(_test_crops(settings), load_photo(settings.style), images,
                        out / "images.png")
    lines = [
        "# Fast style transfer with each norm",
        "",
        f"TransformerNet (Johnson et al.) at {settings.size}×{settings.size}, batch "
        f"{settings.batch_size}, {settings.steps} Adam steps (lr {settings.lr}), seed "
        f"{settings.seed}; style `{settings.style}`; content: "
        f"{', '.join(f'`{c}`' for c in settings.content)}.",
        "",
    ]
    if settings.vgg_weights is None:
        lines += [
            "**Loss network: VGG-16 with seeded random weights** (no `--vgg-weights` file): "
            "the curves compare how each norm optimises the same objective; the images are "
            "texture transfer, not the papers' artistic stylization.",
            "",
        ]
    lines += [
        "Losses averaged over the last tenth of the steps (lower is better):",
        "",
        "| norm | content | style | total |",
        "|---|---|---|---|",
    ]
    for norm, history in results.items():
        last = _tail_mean(history)
        lines.append(f"| {norm} | {last['content']:.4g} | {last['style']:.4g} | "
                     f"{last['total']:.4g} |")
    lines += ["", "Paper figures these runs stand for:", ""]
    lines += [f"- {figure}: {', '.join(norms)}" for figure, norms in FIGURES.items()]
    lines += ["", "![losses](losses.png)", "", "![images](images.png)", ""]
    path = out / "report.md"
    write_text_atomic("\n".join(lines), path)
    return path


DESCRIPTION = (__doc__ or "").splitlines()[0].split(": ", 1)[1]


def _crop_size(text: str) -> int:
    """``--size``: an integer multiple of 4 (the network downsamples twice by 2)."""
    size = int(text)
    if size % 4:
        raise argparse.ArgumentTypeError(f"--size must be a multiple of 4, got {size}")
    return size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``normlab style``'s options to ``parser`` (a command of the ``normlab`` tree)."""
    defaults = StyleSettings()
    parser.add_argument("--norms", nargs="+", default=list(NORMS), choices=NORMS)
    parser.add_argument("--out", default="style", help="output folder (default: style)")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--size", type=_crop_size, default=defaults.size,
                        help="crop size, a multiple of 4")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--style", default=defaults.style,
                        help="style image: a file or a scikit-image sample name")
    parser.add_argument("--content", nargs="+", default=list(defaults.content),
                        help="content images: files or scikit-image sample names")
    parser.add_argument("--vgg-weights", help="torchvision vgg16 state dict (local file)")
    parser.add_argument("--style-weight", type=float, default=defaults.style_weight)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``style``'s options alone and run it (for scripts; prefer ``normlab style``)."""
    parser = argparse.ArgumentParser(prog="normlab style", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run style transfer as ``args`` (from :func:`add_arguments`) say; returns the exit
    status."""
    settings = StyleSettings(
        size=args.size, batch_size=args.batch_size, steps=args.steps, lr=args.lr,
        style=args.style, content=tuple(args.content), vgg_weights=args.vgg_weights,
        style_weight=args.style_weight, seed=args.seed,
    )
    path = run_style_transfer(settings, args.norms, args.out, progress=not args.quiet)
    print(f"report: {path}")
    return 0
