"""``normlab style``: fast style transfer with every norm, as in the papers' stylization figures.

One :class:`~normlab.models.TransformerNet` per norm is trained from the same seed on the
same content batches against one style image
(:mod:`normlab.tasks.style_transfer`). The report (:mod:`normlab.report.style`)
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
from normlab.train.records import pin_settings
from normlab.train.run_folder import atomic_save, write_json_atomic

__all__ = [
    "DESCRIPTION",
    "FIGURES",
    "NORMS",
    "StyleSettings",
    "add_arguments",
    "held_out_crops",
    "run_style_transfer",
    "settings_from_args",
    "tail_mean",
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


def held_out_crops(settings: StyleSettings) -> torch.Tensor:
    """The held-out images every network stylizes (crops of ``astronaut``)."""
    return random_crops([load_photo(HELD_OUT)], TEST_IMAGES, settings.size,
                        seeded_generator(settings.seed, 1))


def _perceptual_loss(settings: StyleSettings) -> PerceptualLoss:
    """The frozen loss every norm's network trains against (its style targets, the VGG's
    Gram matrices of the full-size style image, are computed once)."""
    style = load_photo(settings.style)[None]
    return PerceptualLoss(_vgg(settings), style, content_weight=settings.content_weight,
                          style_weight=settings.style_weight, tv_weight=settings.tv_weight)


def _train_one(
    norm: str, settings: StyleSettings, loss: PerceptualLoss, folder: Path, progress: bool
) -> dict[str, Any]:
    photos = [load_photo(name) for name in settings.content]
    torch.manual_seed(settings.seed)
    model = _network(norm)
    history = train_style_network(
        model, content_batches(photos, settings.batch_size, settings.size, settings.seed),
        loss, steps=settings.steps, lr=settings.lr, post_step=post_step, progress=progress,
    )
    model.eval()
    with torch.no_grad():
        outputs = model(held_out_crops(settings)).clamp(0, 1)
    atomic_save(outputs, folder / f"{norm}-images.pt")
    result = {"norm": norm, "history": history}
    write_json_atomic(result, folder / f"{norm}.json")
    return result


def run_style_transfer(
    settings: StyleSettings,
    norms: Sequence[str] = NORMS,
    out: str | Path = "style",
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Train one network per norm (skipping finished ones) under ``out``.

    Returns:
        ``out`` (its report: :func:`normlab.report.style.style_report`).

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
    loss: PerceptualLoss | None = None
    for index, norm in enumerate(norms, start=1):
        if (folder / f"{norm}.json").is_file():
            log(f"[{index}/{len(norms)}] {norm}: done, skipped")
            continue
        log(f"[{index}/{len(norms)}] {norm}: training {settings.steps} steps")
        if loss is None:
            loss = _perceptual_loss(settings)
        result = _train_one(norm, settings, loss, folder, progress)
        last = tail_mean(result["history"])
        log(f"[{index}/{len(norms)}] {norm}: content {last['content']:.4g}, "
            f"style {last['style']:.4g}")
    return out


def tail_mean(history: Sequence[dict[str, float]]) -> dict[str, float]:
    """Losses averaged over the last tenth of the steps (at least one)."""
    tail = history[-max(1, len(history) // 10):]
    return {k: statistics.fmean(r[k] for r in tail) for k in ("content", "style", "total")}


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


def settings_from_args(args: argparse.Namespace) -> StyleSettings:
    """The settings ``args`` (from :func:`add_arguments`) give."""
    return StyleSettings(
        size=args.size, batch_size=args.batch_size, steps=args.steps, lr=args.lr,
        style=args.style, content=tuple(args.content), vgg_weights=args.vgg_weights,
        style_weight=args.style_weight, seed=args.seed,
    )
