"""Two gloo processes on CPU with synced statistics equal one process with the whole batch,
in the forward, the backward and, through a gradient penalty, to second order on both
backends (the gather's backward is itself differentiable, and the fused backend's replay
gathers again on every process).

Every check runs inside the workers (one spawn for the whole module, to pay the process
start-up once); a failed check raises there, and the parent test names it.
"""

import pickle
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import normlab
from normlab.distributed import StatisticsSync, average_running_stats, to_sync
from normlab.functional import BACKENDS

from ..processes import run_processes

WORLD = 2
SPLITS = {"equal": (4, 4), "unequal": (3, 5), "empty": (8, 0)}
CASES = [
    (norm, backend, split)
    for norm in ("bn", "iebn", "sn", "bin")
    for backend in ("fused", "reference")
    for split in SPLITS
]
PENALTY_CASES = [(norm, backend) for norm in ("bn", "sn") for backend in BACKENDS]
SAMPLES = 4  # per process, in the gradient-penalty checks


def _model(norm: str, backend: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1),
        normlab.create_norm(norm, 6, backend=backend),
        torch.nn.ReLU(),
        torch.nn.Conv2d(6, 4, 3, padding=1),
        normlab.create_norm(norm, 4, backend=backend),
    )
    with torch.no_grad():  # non-trivial affine parameters and gates
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.double()


def _check_case(rank: int, norm: str, backend: str, split: str) -> None:
    sizes = SPLITS[split]
    torch.manual_seed(1)
    x = torch.randn(sum(sizes), 3, 5, 5, dtype=torch.float64)
    upstream = torch.randn(sum(sizes), 4, 5, 5, dtype=torch.float64)
    start, stop = sum(sizes[:rank]), sum(sizes[: rank + 1])

    single = _model(norm, backend).train()
    x_single = x.clone().requires_grad_()
    y_single = single(x_single)
    y_single.backward(upstream)

    synced = to_sync(_model(norm, backend).train())
    x_mine = x[start:stop].clone().requires_grad_()
    y_mine = synced(x_mine)
    y_mine.backward(upstream[start:stop])

    torch.testing.assert_close(y_mine, y_single[start:stop])
    torch.testing.assert_close(x_mine.grad, x_single.grad[start:stop])
    for (name, p_sync), p_single in zip(synced.named_parameters(), single.parameters()):
        summed = p_sync.grad.clone()
        dist.all_reduce(summed)
        torch.testing.assert_close(summed, p_single.grad, msg=f"grad of {name}")
    for (name, b_sync), b_single in zip(synced.named_buffers(), single.buffers()):
        torch.testing.assert_close(b_sync, b_single, msg=f"buffer {name}")
    synced.eval()
    single.eval()
    torch.testing.assert_close(synced(x_mine), single(x)[start:stop])


def _check_switch_off_pickle_and_compile(rank: int) -> None:
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64) + rank
    model = to_sync(_model("bn", "fused").train())
    synced = model(x)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), synced)
    to_sync(model, enabled=False)
    torch.testing.assert_close(model(x), _model("bn", "fused").train()(x))
    restored = pickle.loads(pickle.dumps(StatisticsSync(dist.group.WORLD)))
    assert restored.process_group is None
    layers = torch.nn.Sequential(normlab.create_norm("bn", 2), torch.nn.BatchNorm2d(2))
    for layer in layers:
        layer.running_mean.fill_(float(rank))
        layer.running_var.fill_(1.0 + 2 * rank)
    average_running_stats(layers)
    for layer in layers:
        assert torch.equal(layer.running_mean, torch.full((2,), 0.5))
        assert torch.equal(layer.running_var, torch.full((2,), 2.0))


def _penalty_model(norm: str, backend: str) -> torch.nn.Module:
    """conv -> norm -> tanh (smooth, so the penalty's second derivatives are not zero)."""
    torch.manual_seed(0)
    layers = [torch.nn.Conv2d(3, 4, 3, padding=1), normlab.create_norm(norm, 4, backend=backend)]
    return torch.nn.Sequential(*layers, torch.nn.Tanh()).double().train()


def _penalty_grads(model: torch.nn.Module, x: torch.Tensor):
    """Gradients of ``sum(grad_x(sum(model(x)))^2)`` for the input and the parameters."""
    x = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(model(x).sum(), x, create_graph=True)
    grad.square().sum().backward()
    return x.grad, [p.grad.clone() for p in model.parameters()]


def _check_penalty(rank: int, norm: str, backend: str) -> None:
    torch.manual_seed(1)
    x = torch.randn(WORLD * SAMPLES, 3, 4, 4, dtype=torch.float64)
    mine = slice(rank * SAMPLES, (rank + 1) * SAMPLES)
    single = _penalty_model(norm, backend)
    x_grad, param_grads = _penalty_grads(single, x)
    synced = to_sync(_penalty_model(norm, backend))
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
        for case in CASES:
            try:
                _check_case(rank, *case)
            except Exception:
                failures.put((rank, case, traceback.format_exc()))
        for norm, backend in PENALTY_CASES:
            try:
                _check_penalty(rank, norm, backend)
            except Exception:
                failures.put((rank, ("penalty", norm, backend), traceback.format_exc()))
        try:
            _check_switch_off_pickle_and_compile(rank)
        except Exception:
            failures.put((rank, "switch", traceback.format_exc()))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def failures(tmp_path_factory):
    queue = mp.get_context("spawn").Manager().Queue()
    run_processes(_worker, (queue,), world=WORLD, logs=tmp_path_factory.mktemp("sync-logs"))
    found = {}
    while not queue.empty():
        rank, case, text = queue.get()
        found.setdefault(case, f"rank {rank}:\n{text}")
    return found


@pytest.mark.parametrize("norm, backend, split", CASES)
def test_two_processes_equal_one_process_with_the_whole_batch(failures, norm, backend, split):
    assert (norm, backend, split) not in failures, failures.get((norm, backend, split))


@pytest.mark.parametrize("norm, backend", PENALTY_CASES)
def test_gradient_penalty_through_synced_statistics(failures, norm, backend):
    key = ("penalty", norm, backend)
    assert key not in failures, failures.get(key)


def test_sync_compiles_switches_off_and_pickles_without_its_group(failures):
    assert "switch" not in failures, failures.get("switch")


def test_without_a_process_group_sync_is_a_no_op():
    model = to_sync(_model("sn", "fused").train())
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(model(x), _model("sn", "fused").train()(x))


def test_virtual_batches_refuse_to_sync():
    model = _model("bn", "fused")
    normlab.set_virtual_batch_size(model, 2)
    with pytest.raises(ValueError, match="virtual batches"):
        to_sync(model)
    layer = normlab.create_norm("bn", 4, virtual_batch_size=2)
    layer.statistics_sync = StatisticsSync()
    with pytest.raises(ValueError, match="virtual batches"):
        layer(torch.randn(4, 4, 2, 2))


def test_only_layers_that_pool_over_samples_get_synced():
    layers = {
        "bn": normlab.create_norm("bn", 4),
        "iebn": normlab.create_norm("iebn", 4),
        "bin": normlab.create_norm("bin", 4),
        "sn": normlab.create_norm("sn", 4),
        "in": normlab.create_norm("in", 4, track_running_stats=True),
        "sn_without_bn": normlab.create_norm("sn", 4, using_bn=False),
    }
    to_sync(torch.nn.ModuleDict(layers))
    synced = {name for name, layer in layers.items() if layer.statistics_sync is not None}
    assert synced == {"bn", "iebn", "bin", "sn"}
