"""The ``normlab`` command (also ``python -m normlab``).

Subcommands::

    normlab train -c CONFIG [--set key=value ...] [--quiet] [--print-config]
    normlab train --resume RUN_DIR|CHECKPOINT [--set key=value ...]
    torchrun --nproc-per-node K -m normlab train ...   (K processes, one per device)
    normlab eval RUN_DIR [--checkpoint last.pt|best.pt|prev.pt|PATH] [--recompute-stats N]
    normlab list norms|models|datasets|configs
    normlab demo [--quick] [--out DIR] [--seeds N] [--device cpu|cuda] ...
    normlab bench layers|models [...]

``CONFIG`` is a YAML file or the name of a shipped recipe (``normlab list configs``);
``--set`` overrides are applied after the file, in order, as in timm. Errors a user can
cause (unknown key, missing data, corrupt checkpoint, NaN loss) print one clear message
and exit with status 2 (bad config or usage) or 1 (the run failed).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from functools import partial

__all__ = ["main"]

_LISTS = ("norms", "models", "datasets", "configs")


def _cmd_train(args: argparse.Namespace) -> int:
    from normlab.train.parallel import leave_process_group

    try:
        summary = _run_training(args)
    finally:
        reports = leave_process_group()  # under torchrun, rank 0 reports
    if summary is not None and reports:
        print(
            f"run {summary['run_dir']}: final acc {summary['final_acc']:.2f}, best "
            f"{summary['best_acc']:.2f} (epoch {summary['best_epoch']}), "
            f"{summary['time_s']:.1f}s training"
        )
    return 0


def _run_training(args: argparse.Namespace) -> dict | None:
    """Train or resume as the arguments say; ``None`` when only the config was printed."""
    from normlab.train import config_to_yaml, find_config, load_config, resume, train

    if args.resume is not None:
        if args.config is not None:
            raise _UsageError("--resume continues a run with its own config.yaml; drop -c")
        return resume(args.resume, overrides=args.overrides, progress=not args.quiet)
    if args.config is None:
        raise _UsageError("give a config: normlab train -c CONFIG (see `normlab list configs`)")
    config = load_config(args.config, args.overrides)
    if args.print_config:
        print(config_to_yaml(config), end="")
        return None
    name = find_config(args.config).stem
    return train(config, default_name=name, progress=not args.quiet)


def _metrics_line(label: str, metrics: dict[str, float]) -> str:
    return (
        f"{label}: test acc {metrics['test_acc']:.2f}  top-5 {metrics['test_acc5']:.2f}  "
        f"loss {metrics['test_loss']:.4f}"
    )


def _cmd_eval(args: argparse.Namespace) -> int:
    from normlab.train import evaluate_run

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
        import normlab

        return [(name, "") for name in normlab.list_norms()]
    if kind == "models":
        from normlab.models import list_models, model_info

        rows = []
        for name in list_models():
            info = model_info(name)
            size = "x".join(str(s) for s in info["input_size"])
            rows.append((name, f"{info['family']:<9} {size:<10} {info['summary']}"))
        return rows
    if kind == "datasets":
        from normlab.data import dataset_info, list_datasets

        return [(name, dataset_info(name).description) for name in list_datasets()]
    from normlab.train import list_configs, load_config

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


DEFAULT_SEEDS = {"tiny": 3, "full": 1}


def _cmd_experiment(args: argparse.Namespace) -> int:
    from normlab.experiments import get_experiment, list_experiments

    if args.action == "list":
        names = list_experiments()
        width = max(map(len, names))
        for name in names:
            experiment = get_experiment(name)
            print(f"{name:<{width}}  {experiment.source}: {experiment.title}")
        return 0
    from normlab.experiments import run_experiment
    from normlab.report.experiment import experiment_report

    try:
        experiment = get_experiment(args.name)
    except KeyError as exc:
        raise _UsageError(exc.args[0]) from exc
    seeds = range(args.seeds if args.seeds is not None else DEFAULT_SEEDS[args.scale])
    if args.action == "run":
        counts = run_experiment(experiment, scale=args.scale, seeds=seeds, out=args.out,
                                overrides=args.overrides, progress=not args.quiet)
        print(", ".join(f"{n} {what}" for what, n in counts.items()))
    path = experiment_report(experiment, scale=args.scale, out=args.out, seeds=seeds)
    print(f"report: {path}")
    return 0


def _cmd_demo(argv: list[str]) -> int:
    from normlab.experiments.demo import main as demo_main

    return int(demo_main(argv) or 0)


def _cmd_style(argv: list[str]) -> int:
    from normlab.experiments.style_transfer import main as style_main

    return int(style_main(argv) or 0)


def _cmd_bench(argv: list[str]) -> int:
    from normlab.bench.cli import main as bench_main

    return int(bench_main(argv) or 0)


class _UsageError(Exception):
    """A command line that cannot be run as given."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="normlab",
        description="Adaptive normalization: train, evaluate, experiments, list, demo."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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

    train = sub.add_parser("train", parents=[overrides], help="train a model from a config")
    train.add_argument("-c", "--config", help="YAML file or shipped config name")
    train.add_argument("--resume", metavar="RUN", help="continue a run folder or checkpoint")
    train.add_argument("-q", "--quiet", action="store_true", help="no progress bar (for CI)")
    train.add_argument(
        "--print-config", action="store_true", help="print the resolved config and exit"
    )

    ev = sub.add_parser("eval", parents=[overrides], help="evaluate a run's checkpoint")
    ev.add_argument("run_dir", help="run folder")
    ev.add_argument("--checkpoint", default="last.pt", help="last.pt, best.pt, prev.pt or a path")
    ev.add_argument(
        "--recompute-stats",
        type=int,
        metavar="N",
        help="also evaluate with norm statistics re-estimated from N training batches",
    )
    ev.add_argument("--json", action="store_true", help="print the result as JSON")

    ls = sub.add_parser("list", help="list norms, models, datasets or configs")
    ls.add_argument("what", choices=_LISTS)

    ex = sub.add_parser("experiment", help="the papers' tables: list, run (a sweep), report")
    actions = ex.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="list the named experiments")
    sweep = argparse.ArgumentParser(add_help=False)
    sweep.add_argument("name", help="experiment name (see `normlab experiment list`)")
    sweep.add_argument("--scale", choices=("tiny", "full"), default="tiny",
                       help="tiny: CPU-sized, built-in data (default); full: the paper's recipe")
    sweep.add_argument("--seeds", type=int, metavar="N",
                       help=f"seeds 0..N-1 per cell (default {DEFAULT_SEEDS['tiny']} tiny, "
                            f"{DEFAULT_SEEDS['full']} full)")
    sweep.add_argument("--out", default="experiments", help="output folder (default experiments)")
    run = actions.add_parser("run", parents=[sweep, overrides],
                             help="train the runs not finished yet, then write the report")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    actions.add_parser("report", parents=[sweep], help="write the report from the runs so far")

    sub.add_parser("demo", help="what the adaptive norms do, in minutes (its own options)")
    sub.add_parser("bench", help="layer and model benchmarks (its own options)")
    sub.add_parser("style", help="fast style transfer with every norm (its own options)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``normlab`` command line; returns the exit status."""
    from normlab.data import DatasetError
    from normlab.train import CheckpointError, ConfigError, NonFiniteLossError, RunDirError

    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = {"demo": _cmd_demo, "bench": _cmd_bench, "style": _cmd_style}
    if argv and argv[0] in passthrough:
        command, run = argv[0], partial(passthrough[argv[0]], argv[1:])
    else:
        args = _parser().parse_args(argv)
        commands = {"train": _cmd_train, "eval": _cmd_eval, "list": _cmd_list,
                    "experiment": _cmd_experiment}
        command, run = args.command, partial(commands[args.command], args)
    try:
        return run()
    except (ConfigError, _UsageError) as exc:
        print(f"normlab {command}: error: {exc}", file=sys.stderr)
        return 2
    except (CheckpointError, RunDirError, NonFiniteLossError, DatasetError, ValueError) as exc:
        print(f"normlab {command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"normlab {command}: interrupted", file=sys.stderr)
        return 130
