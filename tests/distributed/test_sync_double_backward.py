"""A gradient penalty through synced batch statistics: two gloo processes equal one process
with the whole batch, to second order, on both backends (the gather's backward is itself
differentiable, and the fused backend's replay gathers again on every process)."""

import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import normlab
from normlab.distributed import to_sync
from normlab.functional import BACKENDS

from ..processes import run_processes

WORLD = 2
SAMPLES = 4  # per process
NORMS = ("bn", "sn")


def _model(norm: str, backend: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        normlab.create_norm(norm, 4, backend=backend),
        torch.nn.Tanh(),
    )
    return model.double().train()


def _penalty_grads(model: torch.nn.Module, x: torch.Tensor):
    """Gradients of ``sum(grad_x(sum(model(x)))^2)`` for the input and the parameters."""
    x = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(model(x).sum(), x, create_graph=True)
    grad.square().sum().backward()
    return x.grad, [p.grad.clone() for p in model.parameters()]


def _check(rank: int, norm: str, backend: str) -> None:
    torch.manual_seed(1)
    x = torch.randn(WORLD * SAMPLES, 3, 4, 4, dtype=torch.float64)
    mine = slice(rank * SAMPLES, (rank + 1) * SAMPLES)
    single = _model(norm, backend)
    x_grad, param_grads = _penalty_grads(single, x)
    synced = to_sync(_model(norm, backend))
    x_grad_mine, param_grads_mine = _penalty_grads(synced, x[mine])
    torch.testing.assert_close(x_grad_mine, x_grad[mine], rtol=1e-10, atol=1e-12)
    for summed, whole in zip(param_grads_mine, param_grads):
        dist.all_reduce(summed)
        torch.testing.assert_close(summed, whole, rtol=1e-10, atol=1e-12)
    for synced_buffer, whole in zip(synced.buffers(), single.buffers()):  # moved once
        torch.testing.assert_close(synced_buffer, whole, rtol=1e-12, atol=1e-12)


def _worker(rank: int, failures) -> None:
    dist.init_process_group("gloo")
    try:
        for norm in NORMS:
            for backend in BACKENDS:
                try:
                    _check(rank, norm, backend)
                except Exception:
                    failures.put((rank, (norm, backend), traceback.format_exc()))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def failures(tmp_path_factory):
    queue = mp.get_context("spawn").Manager().Queue()
    run_processes(_worker, (queue,), world=WORLD, logs=tmp_path_factory.mktemp("dd-logs"))
    found = {}
    while not queue.empty():
        rank, case, text = queue.get()
        found.setdefault(case, f"rank {rank}:\n{text}")
    return found


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm", NORMS)
def test_gradient_penalty_through_synced_statistics(failures, norm, backend):
    assert (norm, backend) not in failures, failures.get((norm, backend))
