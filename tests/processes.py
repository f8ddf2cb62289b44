"""Start worker processes on this machine the way torchrun does, for the distributed tests.

The parent hosts the rendezvous store (as torchrun's agent does, with
``TORCHELASTIC_USE_AGENT_STORE``), so no worker's exit takes the store away from the others
and no port is picked free and then raced for. Each worker's stderr (Python and C++, e.g.
a gloo error or ``std::terminate``) goes to ``rank<K>.log`` with :mod:`faulthandler` on, and
a failed run raises with the tail of every log, so a crash in CI says where it happened.
A worker whose function returned leaves with ``os._exit(0)`` (see ``_worker``).
"""

from __future__ import annotations

import faulthandler
import os
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

LOG_TAIL_LINES = 40


def _worker(rank: int, world: int, port: int, logs: str, fn: Callable, args: tuple) -> None:
    log = open(Path(logs) / f"rank{rank}.log", "w", buffering=1)  # open until the process ends
    os.dup2(log.fileno(), 2)
    faulthandler.enable(log, all_threads=True)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank), TORCHELASTIC_USE_AGENT_STORE="True",
    )
    torch.set_num_threads(1)
    fn(rank, *args)
    sys.stdout.flush()
    log.flush()
    # Leave without the interpreter's teardown: after every collective and file is done,
    # destructors of torch's distributed C++ objects can still abort the process there
    # ("terminate called without an active exception", no Python frame on any thread),
    # seen in rank 1 of the training test in about one full suite in ten.
    os._exit(0)


def run_processes(fn: Callable[..., None], args: tuple[Any, ...], *, world: int,
                  logs: Path) -> None:
    """Run ``fn(rank, *args)`` in ``world`` spawned processes with the launcher's environment.

    ``fn`` joins the group with ``dist.init_process_group("gloo")`` (or through normlab's
    training, which does) and should leave it before returning.

    Raises:
        RuntimeError: A worker raised or died; the message has the tail of each worker's log.
    """
    logs.mkdir(parents=True, exist_ok=True)
    store = dist.TCPStore("127.0.0.1", 0, world, is_master=True, wait_for_workers=False,
                          timeout=timedelta(minutes=5))
    try:
        mp.start_processes(_worker, args=(world, store.port, str(logs), fn, args),
                           nprocs=world, join=True, start_method="spawn")
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
        tails = []
        for rank in range(world):
            path = logs / f"rank{rank}.log"
            lines = path.read_text(errors="replace").splitlines() if path.is_file() else []
            tails.append(f"--- rank {rank} stderr (last {LOG_TAIL_LINES} lines) ---")
            tails.extend(lines[-LOG_TAIL_LINES:])
        raise RuntimeError(f"{exc}\n" + "\n".join(tails)) from exc
