"""``normlab demo``'s report: ``report.md`` and its figures from a demo folder's cells.

The demo's training lives in :mod:`normlab.experiments.demo` (it writes ``cells/*.json``);
this module reads those files alone, so a report can be rebuilt without training, and runs
the ``normlab demo`` command (train the missing cells, then write the report).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from normlab.experiments.demo import (
    SETTING_TITLES,
    SETTINGS,
    DemoSettings,
    accuracy_cells,
    read_cells,
    run_demo,
    settings_from_args,
)
from normlab.report.figures import accuracy_figure, learned_figures
from normlab.report.tables import markdown_table
from normlab.train.run_folder import write_text_atomic

__all__ = ["build_report", "run"]

CAPTIONS = {
    "accuracy.png": "Accuracy per setting and norm",
    "sn_ratios.png": "SN's learned mean/variance ratios per layer (IN, LN, BN)",
    "bin_gates.png": "BIN's gates ρ per layer (1 = BN, 0 = IN)",
    "iebn_gates.png": "IEBN's gate values δ per layer on a test batch",
}
"""Figure file -> its heading in ``report.md``."""


def build_report(out: str | Path, settings: DemoSettings) -> Path:
    """Write ``report.md`` and the figures from the cells in ``out`` (and nothing else).

    Returns:
        The path of ``report.md``.
    """
    out = Path(out)
    cells = read_cells(out)
    table = accuracy_cells(cells)
    norms = [n for n in settings.norms if any(n in table[s] for s in SETTINGS)]
    accuracy_figure(table, norms, SETTINGS, out / "accuracy.png", titles=SETTING_TITLES)
    figures = ["accuracy.png"]
    seed0 = {c["norm"]: c["norm_summary"] for c in cells if c["setting"] == "clean"
             and c["seed"] == 0}
    figures += learned_figures(seed0, out)
    report = out / "report.md"
    write_text_atomic(_report_text(settings, table, norms, cells, figures), report)
    return report


def _report_text(
    settings: DemoSettings,
    table: dict[str, dict[str, list[float]]],
    norms: list[str],
    cells: list[dict[str, Any]],
    figures: list[str],
) -> str:
    minutes = sum(c["seconds"] for c in cells) / 60
    seeds = sorted({c["seed"] for c in cells})
    lines = [
        "# normlab demo: adaptive normalization on built-in digits",
        "",
        "**Scale, honestly:** scikit-learn's 1,797 handwritten digits (8×8 scans) rendered "
        f"at {settings.image_size}×{settings.image_size} with random colours, contrast "
        "and textures; a "
        f"{6 * settings.blocks + 2}-layer CIFAR-style ResNet (widths "
        f"{'/'.join(map(str, settings.widths))}); {settings.epochs} epochs "
        f"{_augmentation(settings)}; "
        f"{len(seeds)} seed(s); trained on a CPU in {minutes:.1f} minutes of training time. "
        "These numbers show the *direction* of the papers' effects on a toy problem; they "
        "are not the papers' CIFAR/ImageNet results.",
        "",
        "Test accuracy (%), mean ± std over seeds (best per column in bold):",
        "",
        markdown_table(table, norms, SETTINGS, row_header="norm",
                       column_titles=SETTING_TITLES),
        "Settings:",
        "",
        "- **clean** — training styles, held-out digits.",
        f"- **BN stats over 2 samples** — every batch-statistics layer pools over virtual "
        f"batches of {settings.virtual_batch_size} samples (SN paper, batch-size table).",
        f"- **noise** — constant-noise attack (Na, Nb) = {tuple(settings.noise)} on every "
        "norm's normalized output (IEBN paper Eqn. 11, Table 2).",
        "- **unseen styles** — the clean models on colour/texture styles absent from "
        "training (BIN paper's style-invariance claim).",
        "",
    ]
    for name in figures:
        lines += [f"## {CAPTIONS[name]}", "", f"![{CAPTIONS[name]}]({name})", ""]
    lines += [
        "Settings of this run: `settings.json`; every cell: `cells/*.json` "
        "(accuracies, time, and `normlab.norm_summary` of the clean models).",
        "",
    ]
    return "\n".join(lines)


def _augmentation(settings: DemoSettings) -> str:
    if settings.padding == 0:
        return "without augmentation"
    return f"of random crops ({settings.padding}-pixel padding)"


def run(args: argparse.Namespace) -> int:
    """``normlab demo``: train the missing cells as ``args`` (from
    :func:`normlab.experiments.demo.add_arguments`) say, write the report, print its table;
    returns the exit status."""
    settings = settings_from_args(args)
    out = run_demo(settings, args.out, progress=not args.quiet)
    print(_summary_text(build_report(out, settings)))
    return 0


def _summary_text(report: Path) -> str:
    text = report.read_text()
    start = text.index("Test accuracy")
    end = text.index("Settings:")
    return f"{text[start:end].strip()}\n\nReport: {report}  (figures beside it)"
