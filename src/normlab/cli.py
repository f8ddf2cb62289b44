"""The ``normlab`` command (also ``python -m normlab``): one parser tree for every command.

Commands::

    normlab train -c CONFIG [--set key=value ...] [--limit-batches N] [--quiet] [--print-config]
    normlab train --resume RUN_DIR|CHECKPOINT [--set key=value ...]
    torchrun --nproc-per-node K -m normlab train ...   (K processes, one per device)
    normlab eval RUN_DIR [--checkpoint last.pt|best.pt|prev.pt|PATH] [--recompute-stats N]
    normlab list norms|models|datasets|transforms|configs
    normlab experiment list | run NAME [--data NAME=PATH ...] | report NAME
    normlab demo [--quick] [--out DIR] [--seeds N] [--device cpu|cuda] ...
    normlab style [--norms ...] [--steps N] [--vgg-weights PATH] ...
    normlab data pack FOLDER OUT [--split train] [--samples-per-shard N] | sample OUT
    normlab bench layers|models|inference|data [...]

``CONFIG`` is a YAML file or the name of a shipped recipe (``normlab list configs``);
``--set`` overrides are applied after the file, in order, as in timm, and validated with
the file (:mod:`normlab.train.config`).

Every command and its options are declared in the one tree :func:`build_parser` builds:
the commands that live in other modules (``demo``, ``style``, ``bench``) contribute their
options with ``add_arguments(parser)`` and run with ``run(args)`` (``demo`` and ``style``
declare their options in :mod:`normlab.experiments` and run from :mod:`normlab.report`,
which trains and then reports), so ``normlab --help``
lists every command's options and ``normlab <command> --help`` shows its own, with
examples. The tree is plain :mod:`argparse`: a CLI library such as jsonargparse (which can
derive options from the typed config) would add a dependency for what ``--set`` with the
validated config already gives, so normlab does without one.

Errors a user can cause end in one line on stderr, ``normlab <command>: error: <message>``,
and an exit status from one table (:data:`EXIT_STATUS`): 2 for a bad config or command line
(:class:`~normlab.errors.ConfigError`, :class:`~normlab.errors.UsageError`; argparse's own
usage errors too), 1 for any other :class:`~normlab.errors.NormlabError` and for an
operating-system error (a read-only folder, a full disk), 130 for Ctrl-C.
``normlab --debug <command> ...`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from normlab.bench import cli as bench_cli
from normlab.data import command as data_command
from normlab.data.presets import list_transform_presets
from normlab.data.registry import dataset_info, list_datasets
from normlab.errors import ConfigError, NormlabError, UsageError
from normlab.experiments import demo, get_experiment, list_experiments, run_experiment
from normlab.experiments import style_transfer as style
from normlab.models.registry import list_models, model_info
from normlab.norms.registry import list_norms, norm_aliases
from normlab.report import demo as demo_command
from normlab.report import style as style_command
from normlab.report.experiment import experiment_report
from normlab.train import (
    config_to_yaml,
    evaluate_run,
    find_config,
    get_task,
    list_configs,
    load_config,
    resume,
    train,
)
from normlab.train.parallel import leave_process_group

__all__ = ["EXIT_STATUS", "build_parser", "main"]

EXIT_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (ConfigError, 2),  # a bad config or command line (UsageError is a ConfigError)
    (NormlabError, 1),  # the run failed: data, checkpoint, run folder, NaN loss
    (OSError, 1),  # a read-only folder, a full disk, a missing file
    (ImportError, 1),  # an optional dependency is missing (the message names its extra)
    (KeyboardInterrupt, 130),
)
"""The exit status of each error class, first match wins; anything else is a bug and shows
its traceback."""

_LISTS = ("norms", "models", "datasets", "transforms", "configs")
DEFAULT_SEEDS = {"tiny": 3, "full": 1}
_WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EFBIG}


def _cmd_train(args: argparse.Namespace) -> int:
    try:
        summary = _run_training(args)
    finally:
        reports = leave_process_group()  # under torchrun, rank 0 reports
    if summary is not None and reports:
        # classification reports final_acc / best_acc; other tasks final_ / best_<monitor>
        monitor = "acc" if "final_acc" in summary else get_task(summary["task"]).monitor
        print(
            f"run {summary['run_dir']}: final {monitor} {summary[f'final_{monitor}']:.2f}, best "
            f"{summary[f'best_{monitor}']:.2f} (epoch {summary['best_epoch']}), "
            f"{summary['time_s']:.1f}s training"
            + ("" if summary.get("limit_batches") is None else
               f" (limited to {summary['limit_batches']} batches per epoch)")
        )
    return 0


def _run_training(args: argparse.Namespace) -> dict[str, Any] | None:
    """Train or resume as the arguments say; ``None`` when only the config was printed."""
    limit = [] if args.limit_batches is None else [f"train.limit_batches={args.limit_batches}"]
    if args.resume is not None:
        if args.config is not None:
            raise UsageError("--resume continues a run with its own config.yaml; drop -c")
        result: dict[str, Any] = resume(
            args.resume, overrides=[*limit, *args.overrides], progress=not args.quiet
        )
        return result
    if args.config is None:
        raise UsageError("give a config: normlab train -c CONFIG (see `normlab list configs`)")
    if limit:
        limit.insert(0, "train.epochs=1")  # a dry run, unless --set train.epochs=... says more
    config = load_config(args.config, [*limit, *args.overrides])
    if limit and config.schedule.warmup_epochs >= config.train.epochs:
        # a dry run shorter than the recipe's warm-up (a cosine recipe's 5 epochs) runs
        # without it rather than failing the full run's check
        schedule = dataclasses.replace(config.schedule, warmup_epochs=0.0)
        config = dataclasses.replace(config, schedule=schedule)
    if args.print_config:
        print(config_to_yaml(config), end="")
        return None
    name = find_config(args.config).stem
    result = train(config, default_name=name, progress=not args.quiet)
    return result


def _metrics_line(label: str, metrics: dict[str, Any]) -> str:
    return (
        f"{label}: test acc {metrics['test_acc']:.2f}  top-5 {metrics['test_acc5']:.2f}  "
        f"loss {metrics['test_loss']:.4f}"
    )


def _cmd_eval(args: argparse.Namespace) -> int:
    result = evaluate_run(
        args.run_dir,
        checkpoint=args.checkpoint,
        recompute_stats=args.recompute_stats,
        overrides=args.overrides,
    )
    if args.json:
        print(json.dumps(result))
        return 0
    print(_metrics_line(f"{result['checkpoint']} (epoch {result['epoch']})", result))
    if "recomputed" in result:
        num = result["num_batches"]
        note = "" if num == args.recompute_stats else " (all that one epoch has)"
        label = f"batch-average statistics over {num} training batches{note}"
        print(_metrics_line(label, result["recomputed"]))
    return 0


def _rows(kind: str) -> list[tuple[str, str]]:
    if kind == "norms":
        aliases = norm_aliases()
        return [
            (name, ", ".join(sorted(a for a, c in aliases.items() if c == name and a != name)))
            for name in list_norms()
        ]
    if kind == "models":
        rows = []
        for name in list_models():
            info = model_info(name)
            size = "x".join(str(s) for s in info["input_size"])
            rows.append((name, f"{info['family']:<9} {size:<10} {info['summary']}"))
        return rows
    if kind == "datasets":
        return [(name, dataset_info(name).description) for name in list_datasets()]
    if kind == "transforms":  # data.train_transform / data.eval_transform of data.loader=stream
        return [(name, "") for name in list_transform_presets()]
    rows = []
    for name in list_configs():
        description = load_config(name).description
        rows.append((name, description.split(": ")[0] if description else ""))
    return rows


def _cmd_list(args: argparse.Namespace) -> int:
    rows = _rows(args.what)
    width = max((len(name) for name, _ in rows), default=0)
    for name, text in rows:
        print(f"{name:<{width}}  {text}".rstrip())
    return 0


def _data_roots(items: Sequence[str]) -> dict[str, str]:
    """``--data NAME=PATH ...`` as ``{NAME: PATH}`` (one root per data set).

    Raises:
        UsageError: An item without ``=``, or a data set given twice.
    """
    roots: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--data {item!r} must look like NAME=PATH, e.g. cifar10=data/cifar")
        if name in roots:
            raise UsageError(f"--data gives {name!r} twice ({roots[name]} and {path})")
        roots[name] = path
    return roots


def _cmd_experiment(args: argparse.Namespace) -> int:
    if args.action == "list":
        names = list_experiments()
        width = max(map(len, names))
        for name in names:
            experiment = get_experiment(name)
            print(f"{name:<{width}}  {experiment.source}: {experiment.title}")
        return 0
    try:
        experiment = get_experiment(args.name)
    except KeyError as exc:
        raise UsageError(exc.args[0]) from exc
    seeds = range(args.seeds if args.seeds is not None else DEFAULT_SEEDS[args.scale])
    if args.action == "run":
        counts = run_experiment(experiment, scale=args.scale, seeds=seeds, out=args.out,
                                overrides=args.overrides, data_roots=_data_roots(args.data),
                                progress=not args.quiet)
        print(", ".join(f"{n} {what}" for what, n in counts.items()))
    path = experiment_report(experiment, scale=args.scale, out=args.out, seeds=seeds)
    print(_our_results(path))
    print(f"report: {path}")
    return 0


def _our_results(report: Path) -> str:
    """The report's first section (our table and what it holds), for the terminal."""
    return "## " + report.read_text().split("\n## ")[1].strip()


_FORMATTER = argparse.RawDescriptionHelpFormatter

_TOP_EPILOG = """\
Run `normlab COMMAND --help` for a command's options and examples. Exit status: 0 done,
1 the run failed (data, checkpoint, run folder, NaN loss, disk), 2 a bad config or
command line, 130 interrupted. `normlab --debug COMMAND ...` shows a traceback instead
of the one-line error.

every command and its options:
"""

_EPILOGS = {
    "train": """\
examples:
  normlab train -c iebn_cifar_resnet164_tiny --set train.epochs=3
  normlab train -c my.yaml --set optim.lr=0.05 model.norm=iebn --print-config
  normlab train --resume runs/iebn_cifar_resnet164_tiny-20250101-120000 --set train.epochs=6
  torchrun --nproc-per-node 2 -m normlab train -c sn_imagenet_resnet50_step
""",
    "eval": """\
examples:
  normlab eval runs/my-run
  normlab eval runs/my-run --checkpoint best.pt --recompute-stats 50 --json
""",
    "list": """\
examples:
  normlab list norms
  normlab list configs
""",
    "experiment": """\
examples:
  normlab experiment list
  normlab experiment run bin_table1_cifar --seeds 1 --set train.epochs=1
  normlab experiment run bin_table1_cifar --scale full --data cifar10=data/cifar-10-batches-py \
      cifar100=data/cifar-100-python
  normlab experiment report iebn_table2_constant_noise --scale full --out experiments
""",
    "demo": """\
examples:
  normlab demo --quick
  normlab demo --norms bn sn iebn --seeds 3 --out demo-report
""",
    "style": """\
examples:
  normlab style --steps 200 --norms in bn iebn
  normlab style --vgg-weights vgg16-397923af.pth --out style-report
""",
    "data": """\
examples:
  normlab data sample tiny-imagenet --per-class 30
  normlab data pack ~/imagenet ~/imagenet-shards --split train --samples-per-shard 1000
""",
    "bench": """\
examples:
  normlab bench layers --norms bn iebn --repeats 5
  normlab bench models --model resnet20 --batch-size 32
  normlab bench inference --model resnet50 --device cuda
  normlab bench data --workers 2 --images 5000
""",
}


def _command(
    sub: Any, name: str, help_text: str, handler: Callable[[argparse.Namespace], int],
    *, description: str | None = None, parents: Sequence[argparse.ArgumentParser] = (),
) -> argparse.ArgumentParser:
    """Add command ``name`` with its help, examples and handler to the tree."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, parents=list(parents), help=help_text,
        description=textwrap.fill(description or help_text, 88),
        epilog=_EPILOGS[name], formatter_class=_FORMATTER,
    )
    parser.set_defaults(handler=handler)
    return parser


def _overrides_parent() -> argparse.ArgumentParser:
    overrides = argparse.ArgumentParser(add_help=False)
    overrides.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides with dotted keys, e.g. optim.lr=0.05 model.norm=iebn",
    )
    return overrides


def _add_training_commands(sub: Any, overrides: argparse.ArgumentParser) -> None:
    """``train``, ``eval``, ``list`` and ``experiment``."""
    tr = _command(sub, "train", "train a model from a config", _cmd_train, parents=[overrides])
    tr.add_argument("-c", "--config", help="YAML file or shipped config name")
    tr.add_argument("--resume", metavar="RUN", help="continue a run folder or checkpoint")
    tr.add_argument("-q", "--quiet", action="store_true", help="no progress bar (for CI)")
    tr.add_argument(
        "--limit-batches", type=int, metavar="N",
        help="dry run: N training and N evaluation batches per epoch, 1 epoch unless "
        "--set train.epochs=... (train.limit_batches)",
    )
    tr.add_argument(
        "--print-config", action="store_true", help="print the resolved config and exit"
    )

    ev = _command(sub, "eval", "evaluate a run's checkpoint", _cmd_eval, parents=[overrides])
    ev.add_argument("run_dir", help="run folder")
    ev.add_argument("--checkpoint", default="last.pt", help="last.pt, best.pt, prev.pt or a path")
    ev.add_argument(
        "--recompute-stats",
        type=int,
        metavar="N",
        help="also evaluate with norm statistics re-estimated from N training batches",
    )
    ev.add_argument("--json", action="store_true", help="print the result as JSON")

    ls = _command(sub, "list", "list norms, models, datasets or configs", _cmd_list)
    ls.add_argument("what", choices=_LISTS)

    ex = _command(sub, "experiment", "the papers' tables: list, run (a sweep), report",
                  _cmd_experiment)
    actions = ex.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="list the named experiments")
    sweep = argparse.ArgumentParser(add_help=False)
    sweep.add_argument("name", help="experiment name (see `normlab experiment list`)")
    sweep.add_argument("--scale", choices=("tiny", "full"), default="tiny",
                       help="tiny: CPU-sized, built-in or sample data (default); full: the "
                            "paper's recipe")
    sweep.add_argument("--seeds", type=int, metavar="N",
                       help=f"seeds 0..N-1 per cell (default {DEFAULT_SEEDS['tiny']} tiny, "
                            f"{DEFAULT_SEEDS['full']} full)")
    sweep.add_argument("--out", default="experiments", help="output folder (default experiments)")
    run = actions.add_parser("run", parents=[sweep, overrides],
                             help="train the runs not finished yet, then write the report")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    run.add_argument("--data", nargs="+", action="extend", default=[], metavar="NAME=PATH",
                     help="one root per data set the cells read, e.g. cifar10=PATH "
                          "cifar100=PATH (replaces their data.root / data.mix.root)")
    actions.add_parser("report", parents=[sweep], help="write the report from the runs so far")


def _leaf_usages(parser: argparse.ArgumentParser) -> list[str]:
    """The usage line of every command under ``parser``, nested ones included."""
    found = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not found:
        usage = " ".join(parser.format_usage().removeprefix("usage: ").split())
        return [textwrap.fill(usage, 88, initial_indent="  ", subsequent_indent="      ")]
    return [line for child in found[0].choices.values() for line in _leaf_usages(child)]


def build_parser() -> argparse.ArgumentParser:
    """The ``normlab`` parser: every command and option (``normlab --help`` lists them)."""
    parser = argparse.ArgumentParser(
        prog="normlab",
        description="Adaptive normalization: train, evaluate, list, experiments, demo, "
        "style transfer, benchmarks.",
        formatter_class=_FORMATTER,
    )
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error instead of one line")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_training_commands(sub, _overrides_parent())
    demo.add_arguments(_command(sub, "demo", "what the adaptive norms do, in minutes",
                                demo_command.run, description=demo.DESCRIPTION))
    style.add_arguments(_command(sub, "style", "fast style transfer with every norm",
                                 style_command.run, description=style.DESCRIPTION))
    data_command.add_arguments(_command(sub, "data", "pack image folders into WebDataset "
                                        "shards, write a sample folder", data_command.run,
                                        description=data_command.DESCRIPTION))
    bench_cli.add_arguments(_command(sub, "bench", "layer, model, inference, data benchmarks",
                                     bench_cli.run, description=bench_cli.DESCRIPTION))
    parser.epilog = _TOP_EPILOG + "\n".join(_leaf_usages(parser))
    return parser


def _message(exc: BaseException) -> str:
    """One line saying what went wrong (an OS error names the file and the reason)."""
    if isinstance(exc, OSError) and not isinstance(exc, NormlabError) and exc.strerror:
        verb = "cannot write " if exc.errno in _WRITE_ERRNOS else ""
        where = f"{verb}{exc.filename}: " if exc.filename is not None else verb
        text = f"{where}{exc.strerror}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``normlab`` command line; returns the exit status."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        return int(args.handler(args))
    except tuple(cls for cls, _ in EXIT_STATUS) as exc:
        if args.debug:
            raise
        status = next(code for cls, code in EXIT_STATUS if isinstance(exc, cls))
        if isinstance(exc, KeyboardInterrupt):
            print(f"normlab {args.command}: interrupted", file=sys.stderr)
        else:
            print(f"normlab {args.command}: error: {_message(exc)}", file=sys.stderr)
        return status
