"""Training engine: configs, the loop, schedules, checkpoints, run folders and evaluation.

Typical use::

    from normlab.train import load_config, train, resume
    summary = train(load_config("iebn_cifar_resnet164_tiny", ["train.epochs=3"]))
    resume("runs/iebn_cifar_resnet164_tiny-20250101-120000")

or from the shell: ``normlab train -c iebn_cifar_resnet164_tiny --set train.epochs=3``.
"""

from normlab.train.checkpoint import atomic_save, load_checkpoint, save_checkpoint
from normlab.train.config import (
    Config,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    config_to_yaml,
    find_config,
    list_configs,
    load_config,
    save_config,
)
from normlab.train.engine import StepInfo, Trainer, evaluate
from normlab.train.errors import CheckpointError, ConfigError, NonFiniteLossError, RunDirError
from normlab.train.evaluation import LoadedRun, evaluate_run, load_run
from normlab.train.runner import Builders, build_setup, resume, train
from normlab.train.schedule import LRSchedule, scaled_lr
from normlab.train.seed import get_rng_state, seed_everything, set_rng_state
from normlab.train.task import Task, get_task, list_tasks, register_task

__all__ = [
    "Builders",
    "CheckpointError",
    "Config",
    "ConfigError",
    "LRSchedule",
    "LoadedRun",
    "NonFiniteLossError",
    "RunDirError",
    "StepInfo",
    "Task",
    "Trainer",
    "apply_overrides",
    "atomic_save",
    "build_setup",
    "config_from_dict",
    "config_to_dict",
    "config_to_yaml",
    "evaluate",
    "evaluate_run",
    "find_config",
    "get_rng_state",
    "get_task",
    "list_configs",
    "list_tasks",
    "load_config",
    "load_run",
    "load_checkpoint",
    "register_task",
    "resume",
    "save_checkpoint",
    "save_config",
    "scaled_lr",
    "seed_everything",
    "set_rng_state",
    "train",
]
