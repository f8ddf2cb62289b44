"""``normlab style``'s report: ``report.md``, ``losses.png`` and ``images.png``.

The training lives in :mod:`normlab.experiments.style_transfer` (it writes ``norms/``);
this module reads those files alone and runs the ``normlab style`` command (train the
missing norms, then write the report).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from normlab.data.photos import load_photo
from normlab.experiments.style_transfer import (
    FIGURES,
    NORMS,
    StyleSettings,
    held_out_crops,
    run_style_transfer,
    settings_from_args,
    tail_mean,
)
from normlab.report.figures import style_images_figure, style_losses_figure
from normlab.train.run_folder import write_text_atomic

__all__ = ["run", "style_report"]


def style_report(out: str | Path, settings: StyleSettings) -> Path:
    """``report.md``, ``losses.png`` and ``images.png`` from the finished norms in ``out``.

    Returns:
        The path of ``report.md``.
    """
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
    style_images_figure(held_out_crops(settings), load_photo(settings.style), images,
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
        last = tail_mean(history)
        lines.append(f"| {norm} | {last['content']:.4g} | {last['style']:.4g} | "
                     f"{last['total']:.4g} |")
    lines += ["", "Paper figures these runs stand for:", ""]
    lines += [f"- {figure}: {', '.join(norms)}" for figure, norms in FIGURES.items()]
    lines += ["", "![losses](losses.png)", "", "![images](images.png)", ""]
    path = out / "report.md"
    write_text_atomic("\n".join(lines), path)
    return path


def run(args: argparse.Namespace) -> int:
    """``normlab style``: train the missing norms as ``args`` (from
    :func:`normlab.experiments.style_transfer.add_arguments`) say, then write the report;
    returns the exit status."""
    settings = settings_from_args(args)
    out = run_style_transfer(settings, args.norms, args.out, progress=not args.quiet)
    print(f"report: {style_report(out, settings)}")
    return 0
