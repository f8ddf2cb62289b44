"""The papers' experiments: YAML recipes (``configs/``) and named tables (``tables/``).

Configs are found by name with :func:`normlab.train.find_config` and listed with
:func:`normlab.train.list_configs` (``normlab list configs``). Each paper table is an
:class:`Experiment` (a grid of runs in the paper's layout, with the paper's numbers), run
by :func:`run_experiment` and reported by :func:`normlab.report.experiment_report`
(``normlab experiment list | run NAME | report NAME``).
"""

from normlab.experiments import tables  # noqa: F401  (each module registers its table)
from normlab.experiments.registry import (
    SCALES,
    Cell,
    Experiment,
    get_experiment,
    list_experiments,
    register,
)
from normlab.experiments.sweep import plan_runs, run_experiment, run_status

__all__ = [
    "SCALES",
    "Cell",
    "Experiment",
    "get_experiment",
    "list_experiments",
    "plan_runs",
    "register",
    "run_experiment",
    "run_status",
]
