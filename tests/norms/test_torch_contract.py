"""torch's contract for every registered norm, against its closest ``torch.nn`` layer.

Every table below is generated from ``normlab.list_norms()`` x dims (1, 2, 3) x backends
(``normlab.functional.BACKENDS``). ``TWINS`` holds how each norm meets its torch twin, as
the norm declares it (``register_norm(twin=normlab.norms.TorchTwin(...))``):
BN -> ``nn.BatchNorm{1,2,3}d``, IN -> ``nn.InstanceNorm{1,2,3}d``, LN -> ``nn.GroupNorm(1, C)``,
GN -> ``nn.GroupNorm``; IEBN, SN, BIN and the other BN kin follow BatchNorm's contract for
their BN part (running statistics, ``num_batches_tracked``, eval, errors) and are compared
with it at their BN-equivalent point for outputs and gradients. The twin is a required argument of
``register_norm``: a newly registered norm is in every table, unless it declares that it has
no torch twin (``twin=None``). Comparisons are in float64: outputs, gradients, running
statistics, step counters, state dicts and exception types (ours must be an instance of the
type torch raises).

Deliberate differences from torch (documented in the layers' docstrings), and so skipped
or asserted differently here:

- ``InstanceNorm`` defaults to ``affine=True`` (the tables pass ``affine`` explicitly);
- where torch raises on an empty input because of a kernel limitation (InstanceNorm with
  N = 0: IndexError; GroupNorm with an empty spatial axis: RuntimeError), ours returns the
  empty output;
- a forward that raises leaves the layer unchanged (torch's BatchNorm has already counted the
  step when its eps or one-value check fails), see ``test_a_failed_forward_changes_nothing``;
- IEBN/BIN hold per-channel gates, so their channel count is binding even where torch's
  affine-free, untracked BatchNorm takes any; BIN's instance branch needs more than one
  value per (n, c) in training.
"""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from collections import OrderedDict
from collections.abc import Callable

import pytest
import torch
from torch import nn

import normlab
from normlab.functional import BACKENDS
from normlab.norms import TorchTwin, norm_info, resolve_norm
from tests.norms.tables import torch_twins

C = 4
DIMS = (1, 2, 3)
F64 = torch.float64
TOL = {"atol": 1e-10, "rtol": 1e-8}
TWINS = torch_twins()
TORCH_CLASSES = {
    "bn": {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d},
    "in": {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d},
}
NAMES = list(TWINS)
CASES = [(name, dim) for name in NAMES for dim in DIMS]
RUNS = [(name, dim, backend) for name, dim in CASES for backend in BACKENDS]


def ids(value) -> str:
    return str(value)


def kind(name: str) -> str:
    return TWINS[name].kind


def has_running_stats_args(name: str) -> bool:
    return kind(name) != "gn"


def theirs(name, dim, *, num_features=C, eps=1e-5, momentum=0.1, affine=True, bias=True,
           track=None, groups=None, dtype=F64) -> nn.Module:
    """The torch twin."""
    twin = TWINS[name]
    if twin.kind == "gn":
        return nn.GroupNorm(
            twin.groups if groups is None else groups, num_features, eps, affine, bias=bias,
            dtype=dtype,
        )
    track = (twin.kind == "bn") if track is None else track
    return TORCH_CLASSES[twin.kind][dim](
        num_features, eps, momentum, affine, track, bias=bias, dtype=dtype
    )


def ours(name, dim, backend="reference", *, point=False, num_features=C, eps=1e-5,
         momentum=0.1, affine=True, bias=True, track=None, groups=None, dtype=F64,
         **extra) -> nn.Module:
    """Our layer, with the same arguments (and at the twin's point when ``point``)."""
    twin = TWINS[name]
    kwargs = {**twin.kwargs, **(twin.point if point else {}), **extra}
    kwargs.update(eps=eps, affine=affine, bias=bias, dtype=dtype, backend=backend)
    if has_running_stats_args(name):
        kwargs.update(
            momentum=momentum,
            track_running_stats=(twin.kind == "bn") if track is None else track,
        )
    if groups is not None:
        kwargs["num_groups"] = groups
    return normlab.create_norm(name, num_features, dim=dim, **kwargs)


def pair(name, dim, backend="reference", seed=0, **kwargs) -> tuple[nn.Module, nn.Module]:
    """(ours at the twin point, torch twin) with the same random affine parameters."""
    mine, twin = ours(name, dim, backend, point=True, **kwargs), theirs(name, dim, **{
        k: v for k, v in kwargs.items() if k != "groups" or kind(name) == "gn"
    })
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key in ("weight", "bias"):
            if getattr(twin, key) is not None:
                value = 1.0 + 0.5 * torch.randn(C, generator=generator, dtype=F64)
                value = value[: getattr(twin, key).shape[0]]
                getattr(twin, key).copy_(value)
                getattr(mine, key).copy_(value)
    return mine, twin


def spatial_shape(dim: int) -> tuple[int, ...]:
    return {1: (5,), 2: (3, 2), 3: (2, 3, 2)}[dim]


def batch(dim, n=3, seed=0, channels=C, flat=False, offset=1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (n, channels) + (() if flat else spatial_shape(dim))
    return torch.randn(shape, generator=generator, dtype=F64) * 2 + offset


def outcome(fn: Callable[[], object]) -> tuple[object, BaseException | None, list]:
    """(result, exception, warning categories) of ``fn()``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return fn(), None, [w.category for w in caught]
        except Exception as error:  # noqa: BLE001 - compared with torch's below
            return None, error, [w.category for w in caught]


def call_both(mine: nn.Module, twin: nn.Module, x: torch.Tensor):
    """The outcomes of ``mine(x)`` and ``twin(x)``."""
    return outcome(lambda: mine(x)), outcome(lambda: twin(x))


def assert_same_outcome(mine, torchs, *, extra_error_allowed=False):
    """Ours raises an instance of torch's exception type exactly when torch raises."""
    _, my_error, _ = mine
    _, torch_error, _ = torchs
    if torch_error is not None:
        assert my_error is not None, f"torch raised {torch_error!r}, ours did not"
        assert isinstance(my_error, type(torch_error)), (my_error, torch_error)
    elif not (extra_error_allowed and my_error is not None):
        assert my_error is None, f"ours raised {my_error!r}, torch did not"


def assert_same_buffers(mine: nn.Module, twin: nn.Module) -> None:
    for key in ("running_mean", "running_var", "num_batches_tracked"):
        a, b = getattr(mine, key, None), getattr(twin, key, None)
        assert (a is None) == (b is None), key
        if a is not None:
            torch.testing.assert_close(a, b, **TOL, msg=key)


def forward_backward(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor):
    """Output and gradients (input, weight, bias) of one forward and backward."""
    x = x.clone().requires_grad_()
    y = layer(x)
    params = [p for p in (layer.weight, layer.bias) if p is not None]
    grads = torch.autograd.grad(y, [x, *params], grad, allow_unused=True)
    return y.detach(), grads


def compare_step(mine, twin, x, seed=0):
    """One forward/backward of both: same outcome, outputs, gradients and buffers."""
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
    mine_result = outcome(lambda: forward_backward(mine, x, grad))
    torch_result = outcome(lambda: forward_backward(twin, x, grad))
    assert_same_outcome(mine_result, torch_result)
    if torch_result[1] is None:
        (y_mine, g_mine), (y_torch, g_torch) = mine_result[0], torch_result[0]
        torch.testing.assert_close(y_mine, y_torch, **TOL)
        for a, b in zip(g_mine, g_torch):
            torch.testing.assert_close(a, b, **TOL)
    assert_same_buffers(mine, twin)


def instance_rule(name: str, training: bool, x: torch.Tensor) -> bool:
    """Whether BIN's instance branch refuses ``x`` (one value per (n, c) in training)."""
    return TWINS[name].instance_branch and training and math.prod(x.shape[2:]) <= 1


def input_shapes(name: str, dim: int) -> list[tuple[bool, int]]:
    """(flat, n) input layouts the twin takes batched: (N, C) only for 1d non-IN layers
    without an instance branch."""
    flat = dim == 1 and kind(name) != "in" and not TWINS[name].instance_branch
    return [False] + ([True] if flat else [])


# --------------------------------------------------------------------------- registry


def test_every_registered_norm_declares_its_twin():
    """``register_norm(twin=...)`` is a required declaration: a norm has a torch twin (and is
    then in every table below) or says it has none."""
    for name in normlab.list_norms():
        twin = norm_info(name).twin
        assert twin is None or isinstance(twin, TorchTwin), name
        assert twin is None or twin.kind in ("bn", "in", "gn"), (name, twin)
    with pytest.raises(TypeError, match="twin"):
        normlab.norms.register_norm("twinless")  # type: ignore[call-arg]


@pytest.mark.parametrize("name, dim", CASES, ids=ids)
def test_constructor_takes_every_argument_of_the_torch_twin(name, dim):
    torch_params = inspect.signature(type(theirs(name, dim)).__init__).parameters
    our_params = inspect.signature(resolve_norm(name, dim).__init__).parameters
    wanted = set(torch_params) - {"self", "num_groups", "num_channels", "num_features"}
    assert wanted <= set(our_params), wanted - set(our_params)
    assert our_params["device"].kind is inspect.Parameter.KEYWORD_ONLY
    assert our_params["dtype"].kind is inspect.Parameter.KEYWORD_ONLY
    if "num_groups" in torch_params and name == "gn":
        assert "num_groups" in our_params


# ------------------------------------------------------------- parameters and buffers


def _tensors(layer: nn.Module) -> dict[str, torch.Tensor]:
    return dict(layer.state_dict(keep_vars=True))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("name, dim", CASES, ids=ids)
def test_parameters_and_buffers_match_the_twin(name, dim, affine, bias):
    for dtype in (torch.float64, torch.float16):
        for track in ([True, False] if has_running_stats_args(name) else [None]):
            mine = ours(name, dim, point=True, affine=affine, bias=bias, track=track, dtype=dtype)
            twin = theirs(name, dim, affine=affine, bias=bias, track=track, dtype=dtype)
            mine_tensors, torch_tensors = _tensors(mine), _tensors(twin)
            own = set(mine_tensors) - set(torch_tensors)
            assert not own & {"weight", "bias", "running_mean", "running_var"}
            for key, value in torch_tensors.items():
                assert key in mine_tensors, key
                assert mine_tensors[key].dtype == value.dtype, key
                torch.testing.assert_close(mine_tensors[key], value, msg=key)
            assert all(t.dtype == dtype for t in mine_tensors.values() if t.is_floating_point())


@pytest.mark.parametrize("name, dim", CASES, ids=ids)
def test_meta_device_init_then_reset_parameters_gives_a_fresh_layer(name, dim):
    fresh = ours(name, dim)
    for meta in (lambda: ours(name, dim, device="meta"), None):
        if meta is None:
            with torch.device("meta"):
                layer = ours(name, dim)
        else:
            layer = meta()
        assert all(t.device.type == "meta" for t in layer.state_dict().values())
        layer.to_empty(device="cpu")
        layer.reset_parameters()
        for key, value in fresh.state_dict().items():
            torch.testing.assert_close(layer.state_dict()[key], value, msg=key)


@pytest.mark.parametrize("name, dim", CASES, ids=ids)
def test_reset_parameters_and_reset_running_stats(name, dim):
    init = TWINS[name].init
    fresh = ours(name, dim, **init)
    layer = ours(name, dim, **init)
    twin = theirs(name, dim)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.rand_like(p) + 0.5)
    for step in range(2):
        layer(batch(dim, seed=step))
        twin(batch(dim, seed=step))
    trained = {k: v.clone() for k, v in layer.state_dict().items()}
    layer.reset_running_stats()
    if hasattr(twin, "reset_running_stats"):  # torch's GroupNorm has none
        twin.reset_running_stats()
    assert_same_buffers(layer, twin)
    for key, value in layer.named_parameters():
        torch.testing.assert_close(value.detach(), trained[key], msg=key)
    layer.reset_parameters()
    twin.reset_parameters()
    for key, value in fresh.state_dict().items():
        torch.testing.assert_close(layer.state_dict()[key], value, msg=key)
    assert_same_buffers(layer, twin)


# --------------------------------------------------------------- outputs and statistics

CONFIGS = [
    {"momentum": 0.1, "affine": True, "bias": True, "track": True},
    {"momentum": None, "affine": True, "bias": False, "track": True},
    {"momentum": 0.0, "affine": False, "bias": True, "track": True},
    {"momentum": 0.1, "affine": True, "bias": True, "track": False},
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(map(str, c.values())))
@pytest.mark.parametrize("name, dim, backend", RUNS, ids=ids)
def test_training_and_eval_trajectory_matches_the_twin(name, dim, backend, config):
    """Train, train, eval, train: outputs, gradients, running statistics and
    num_batches_tracked after every step (momentum None: cumulative average)."""
    if not has_running_stats_args(name):
        config = {k: v for k, v in config.items() if k not in ("momentum", "track")}
    for flat in input_shapes(name, dim):
        mine, twin = pair(name, dim, backend, **config)
        for step, training in enumerate([True, True, False, True]):
            mine.train(training)
            twin.train(training)
            x = batch(dim, seed=step, flat=flat, offset=float(step))
            compare_step(mine, twin, x, seed=step)


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("name, dim, backend", RUNS, ids=ids)
def test_running_statistics_of_the_default_layer_are_its_twins(name, dim, backend, momentum):
    """Away from the twin point (SN's mixed ratios, IEBN's gate, BIN's rho < 1) the running
    statistics and the step counter are still exactly the twin's."""
    kwargs = {"momentum": momentum, "track": True} if has_running_stats_args(name) else {}
    mine = ours(name, dim, backend, **kwargs)
    twin = theirs(name, dim, **kwargs)
    with torch.no_grad():
        for p in mine.parameters():
            p.mul_(0.5)
    for step in range(3):
        x = batch(dim, seed=step, offset=float(step))
        mine(x.clone().requires_grad_()).sum().backward()
        twin(x)
        assert_same_buffers(mine, twin)


CHANGES = ["track_off", "track_on", "momentum", "mode"]


@pytest.mark.parametrize("change", CHANGES)
@pytest.mark.parametrize("name, dim, backend", RUNS, ids=ids)
def test_flags_changed_after_construction(name, dim, backend, change):
    """torch reads its flags at every forward; the running buffers (not the flag) decide
    whether eval uses them, and InstanceNorm keeps moving existing buffers."""
    if not has_running_stats_args(name) and change != "mode":
        pytest.skip("GroupNorm-type layers have no running-statistics flags")
    track = change != "track_on" if has_running_stats_args(name) else None
    mine, twin = pair(name, dim, backend, track=track)
    steps = [True, False, True, False, True]
    for step, training in enumerate(steps):
        if step == 1:
            for layer in (mine, twin):
                if change == "track_off":
                    layer.track_running_stats = False
                elif change == "track_on":
                    layer.track_running_stats = True
                elif change == "momentum":
                    layer.momentum = None
        if step == 3 and change == "momentum":
            mine.momentum = twin.momentum = 0.5
        mine.train(training)
        twin.train(training)
        compare_step(mine, twin, batch(dim, seed=step, offset=float(step)), seed=step)


def _empty_shapes(dim: int) -> list[tuple[int, ...]]:
    spatial = spatial_shape(dim)
    return [(0, C, *spatial), (3, C, 0, *spatial[1:])] + ([(0, C)] if dim == 1 else [])


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("name, dim, backend", RUNS, ids=ids)
def test_empty_inputs(name, dim, backend, training):
    """Empty output, zero parameter gradients and torch's step counter (a training
    forward counts, even on an empty batch; momentum None makes the count visible in the
    next batch's weight)."""
    for shape in _empty_shapes(dim):
        if kind(name) == "in" and len(shape) == 2:
            continue  # an unbatched (C, L) input for InstanceNorm1d
        kwargs = {"momentum": None} if has_running_stats_args(name) else {}
        mine, twin = pair(name, dim, backend, **kwargs)
        mine.train(training)
        twin.train(training)
        x = torch.zeros(shape, dtype=F64)
        torch_result = outcome(functools.partial(twin, x.clone().requires_grad_()))
        x_mine = x.clone().requires_grad_()
        y = mine(x_mine)
        assert y.shape == shape
        y.sum().backward()
        assert x_mine.grad.shape == shape
        for p in mine.parameters():
            assert p.grad is None or not p.grad.any()
        if torch_result[1] is None:  # else a torch kernel limitation (module docstring)
            assert_same_buffers(mine, twin)
        compare_step(mine, twin, batch(dim, seed=1))  # and it goes on as torch's


@pytest.mark.parametrize("track", [True, False])
@pytest.mark.parametrize(
    "name, dim, backend", [r for r in RUNS if kind(r[0]) == "in"], ids=ids
)
def test_unbatched_instance_norm_inputs(name, dim, backend, track):
    mine, twin = pair(name, dim, backend, track=track)
    for step, training in enumerate([True, True, False]):
        mine.train(training)
        twin.train(training)
        compare_step(mine, twin, batch(dim, seed=step, n=1)[0], seed=step)
    for affine in (True, False):  # a wrong channel count, unbatched
        mine, twin = pair(name, dim, backend, affine=affine)
        x = batch(dim, n=1, channels=C + 1)[0]
        mine_result, torch_result = call_both(mine, twin, x)
        assert_same_outcome(mine_result, torch_result)
        assert mine_result[2] == torch_result[2]


# ------------------------------------------------------------------ checks and errors


@pytest.mark.parametrize("ndim", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("name, dim", CASES, ids=ids)
def test_input_dimensions(name, dim, ndim):
    shape = (C,) if ndim == 1 else (2, C) + (3,) * (ndim - 2)
    x = torch.randn(shape, dtype=F64)
    for training in (True, False):
        mine, twin = pair(name, dim)
        mine.train(training)
        twin.train(training)
        mine_result, torch_result = call_both(mine, twin, x)
        if torch_result[1] is None and x.dim() > 1 and instance_rule(name, training, x):
            assert isinstance(mine_result[1], ValueError)
            continue
        assert_same_outcome(mine_result, torch_result)
        if torch_result[1] is None:
            torch.testing.assert_close(mine_result[0], torch_result[0], **TOL)


@pytest.mark.parametrize("channels", [C - 1, 2 * C])
@pytest.mark.parametrize("affine, track", [(True, True), (True, False), (False, True),
                                           (False, False)])
@pytest.mark.parametrize("name, dim", CASES, ids=ids)
def test_wrong_channel_count(name, dim, affine, track, channels):
    """Same exception type (or torch's warning) as the twin; a layer with per-channel
    tensors torch's twin lacks (IEBN/BIN gates) always needs C channels."""
    if not has_running_stats_args(name):
        track = None
    mine, twin = pair(name, dim, affine=affine, track=track)
    x = batch(dim, channels=channels)
    mine_result, torch_result = call_both(mine, twin, x)
    extra_state = any(
        t.shape[:1] == (C,) for k, t in mine.state_dict().items() if k not in twin.state_dict()
    )
    assert_same_outcome(mine_result, torch_result, extra_error_allowed=extra_state)
    if mine_result[1] is None:
        assert mine_result[2] == torch_result[2]
        torch.testing.assert_close(mine_result[0], torch_result[0], **TOL)


def _one_value_cases(name):
    """(n, channels, groups) where statistics come from one value per channel or group."""
    cases = [(1, C, None), (2, C, None)]
    if name == "gn":
        cases += [(1, C, C), (2, C, C)]
    if name == "ln":
        cases += [(1, 1, None)]
    return cases


@pytest.mark.parametrize("track", [True, False])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("name, dim", CASES, ids=ids)
def test_one_value_per_channel_or_group(name, dim, training, track):
    """BN raises torch's ValueError for N * M = 1 in training (and in eval without running
    statistics), IN for M = 1, GroupNorm only for N * C / G * M = 1."""
    if not has_running_stats_args(name):
        track = None
    for n, channels, groups in _one_value_cases(name):
        for flat in ([False, True] if dim == 1 else [False]):
            shape = (n, channels) + (() if flat else (1,) * dim)
            if kind(name) == "in" and flat:
                continue
            kwargs = {"num_features": channels, "track": track}
            if groups is not None:
                kwargs["groups"] = groups
            mine = ours(name, dim, point=True, **kwargs)
            twin = theirs(name, dim, **kwargs)
            mine.train(training)
            twin.train(training)
            x = torch.randn(shape, dtype=F64)
            mine_result, torch_result = call_both(mine, twin, x)
            if instance_rule(name, training, x) and torch_result[1] is None:
                assert isinstance(mine_result[1], ValueError)  # BIN's instance branch
                continue
            assert_same_outcome(mine_result, torch_result)
            if torch_result[1] is None:
                torch.testing.assert_close(mine_result[0], torch_result[0], **TOL)


@pytest.mark.parametrize("eps", [0.0, -1e-3])
@pytest.mark.parametrize("track", [True, False])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("name, dim", CASES, ids=ids)
def test_eps_is_checked_as_torch_checks_it(name, dim, training, track, eps):
    """BatchNorm: ValueError for eps <= 0 with batch statistics, eps < 0 with running
    ones; InstanceNorm and GroupNorm take any eps."""
    if not has_running_stats_args(name):
        track = None
    mine, twin = pair(name, dim, eps=eps, track=track)
    mine.train(training)
    twin.train(training)
    x = batch(dim)
    mine_result, torch_result = call_both(mine, twin, x)
    assert_same_outcome(mine_result, torch_result)
    if torch_result[1] is None:
        torch.testing.assert_close(mine_result[0], torch_result[0], equal_nan=True, **TOL)


@pytest.mark.parametrize("name, dim", [c for c in CASES if kind(c[0]) == "bn"], ids=ids)
def test_a_failed_forward_changes_nothing(name, dim):
    """Deliberate difference: torch's BatchNorm counts the step before its checks fail."""
    for eps, x in ((0.0, batch(dim)), (1e-5, torch.randn((1, C) + (1,) * dim, dtype=F64))):
        mine, twin = pair(name, dim, eps=eps)
        mine_result, torch_result = call_both(mine, twin, x)
        assert isinstance(torch_result[1], ValueError)
        assert isinstance(mine_result[1], ValueError)
        assert int(twin.num_batches_tracked) == 1 and int(mine.num_batches_tracked) == 0


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.bool])
@pytest.mark.parametrize("name, dim", CASES, ids=ids)
def test_non_floating_inputs(name, dim, dtype):
    for affine, track in ((True, True), (False, False)):
        if not has_running_stats_args(name):
            track = None
        mine, twin = pair(name, dim, affine=affine, track=track)
        x = torch.ones((2, C) + spatial_shape(dim), dtype=dtype)
        assert_same_outcome(*call_both(mine, twin, x))


DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.mark.parametrize("layer_dtype", DTYPES)
@pytest.mark.parametrize("name, dim", CASES, ids=ids)
def test_mixed_dtypes(name, dim, layer_dtype):
    """torch takes float16/bfloat16 inputs into float32 layers and no other mix."""
    for input_dtype in DTYPES:
        mine, twin = pair(name, dim)
        mine.to(layer_dtype)
        twin.to(layer_dtype)
        x = batch(dim).to(input_dtype)
        mine_result, torch_result = call_both(mine, twin, x)
        assert_same_outcome(mine_result, torch_result)
        if torch_result[1] is None:
            assert mine_result[0].dtype == torch_result[0].dtype


@pytest.mark.parametrize("num_groups", [3, 0, -2])
@pytest.mark.parametrize(
    "name, dim", [c for c in CASES if "num_groups" in TWINS[c[0]].kwargs], ids=ids
)
def test_group_count_errors(name, dim, num_groups):
    x = batch(dim)
    mine_result = outcome(lambda: ours(name, dim, groups=num_groups)(x))
    torch_result = outcome(lambda: theirs(name, dim, groups=num_groups)(x))
    assert_same_outcome(mine_result, torch_result)


@pytest.mark.parametrize("name, dim", CASES, ids=ids)
def test_negative_channel_count(name, dim):
    assert_same_outcome(
        outcome(lambda: ours(name, dim, num_features=-1)),
        outcome(lambda: theirs(name, dim, num_features=-1)),
    )


# ------------------------------------------------------------------------ state dicts


@pytest.mark.parametrize("name, dim", CASES, ids=ids)
def test_state_dicts_load_both_ways(name, dim):
    mine, twin = pair(name, dim)
    for step in range(2):
        twin(batch(dim, seed=step, offset=3.0))
    torch_state = twin.state_dict()
    assert mine.state_dict()._metadata[""]["version"] == torch_state._metadata[""]["version"]
    own = {k: v for k, v in mine.state_dict().items() if k not in torch_state}
    mine.load_state_dict({**torch_state, **own})
    assert_same_buffers(mine, twin)
    mine.eval()
    twin.eval()
    x = batch(dim, seed=5)
    torch.testing.assert_close(mine(x), twin(x), **TOL)
    back = theirs(name, dim)
    back.load_state_dict({k: v for k, v in mine.state_dict().items() if k in torch_state})
    assert_same_buffers(back, twin)


@pytest.mark.parametrize("version", [1, None, 2])
@pytest.mark.parametrize("name, dim", CASES, ids=ids)
def test_checkpoints_without_num_batches_tracked(name, dim, version):
    """Version 1 (or unversioned) checkpoints without the counter load and keep the
    layer's own counter; a version-2 one without it is an error (torch's _NormBase)."""
    if not has_running_stats_args(name):
        pytest.skip("no running statistics")
    results = []
    for layer in pair(name, dim, track=True):
        layer(batch(dim))
        state = OrderedDict(
            (k, v.clone()) for k, v in layer.state_dict().items() if k != "num_batches_tracked"
        )
        if version is not None:
            state._metadata = OrderedDict({"": {"version": version}})
        results.append(outcome(lambda layer=layer, state=state: layer.load_state_dict(state)))
        results[-1] = (*results[-1], getattr(layer, "num_batches_tracked", None))
    assert_same_outcome(results[0][:3], results[1][:3])
    assert torch.equal(results[0][3], results[1][3])


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("name, dim", [c for c in CASES if kind(c[0]) == "in"], ids=ids)
def test_unversioned_running_stats_into_an_untracked_instance_norm(name, dim, strict):
    state = {"running_mean": torch.zeros(C, dtype=F64), "running_var": torch.ones(C, dtype=F64)}
    mine, twin = pair(name, dim, affine=False, track=False)
    assert_same_outcome(
        outcome(lambda: mine.load_state_dict(dict(state), strict=strict)),
        outcome(lambda: twin.load_state_dict(dict(state), strict=strict)),
    )


# ---------------------------------------------------------------------------- repr


@pytest.mark.parametrize("config", [
    {},
    {"momentum": None, "bias": False},
    {"affine": False, "track": False, "eps": 1e-3},
    {"affine": False, "bias": False, "track": True},
], ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
@pytest.mark.parametrize("name, dim", CASES, ids=ids)
def test_extra_repr_in_torchs_format(name, dim, config):
    """C first, then torch's ``key=value`` fields in torch's order, then ours."""
    if not has_running_stats_args(name):
        config = {k: v for k, v in config.items() if k not in ("momentum", "track")}
    mine, twin = ours(name, dim, **config), theirs(name, dim, **config)
    torch_fields = twin.extra_repr().split(", ")
    if kind(name) == "gn":
        torch_fields = torch_fields[1:]  # torch's GroupNorm starts with num_groups
    assert mine.extra_repr().split(", ")[: len(torch_fields)] == torch_fields


# ----------------------------------------------------------------------- model zoos


@pytest.mark.parametrize("name", NAMES)
def test_timm_builds_models_with_every_norm_as_norm_layer(name):
    """timm passes ``device=``/``dtype=`` to ``norm_layer``; meta-device builds work."""
    timm = pytest.importorskip("timm")
    cls = resolve_norm(name, 2)
    with torch.device("meta"):
        meta = timm.create_model("resnet10t", norm_layer=cls, num_classes=3)
    assert {t.device.type for t in meta.state_dict().values()} == {"meta"}
    model = timm.create_model("resnet10t", norm_layer=cls, num_classes=3, dtype=F64)
    assert {t.dtype for t in model.state_dict().values()} <= {F64, torch.long}
    assert model(torch.randn(2, 3, 64, 64, dtype=F64)).shape == (2, 3)
    if kind(name) == "bn":
        torch_keys = timm.create_model("resnet10t", num_classes=3).state_dict().keys()
        assert set(torch_keys) <= set(model.state_dict())
