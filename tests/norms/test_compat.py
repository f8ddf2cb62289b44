"""The authors' checkpoints load strictly and give the outputs their layers would give.

The ``official_*`` functions below re-derive the authors' layers from the facts in
../shared/papers/OFFICIAL_IMPLEMENTATIONS.md (parameter shapes, unbiased instance variance,
reversed momentum); they are written for these tests, not copied."""

from collections import OrderedDict

import pytest
import torch
from torch import nn

import normlab
from normlab.norms.compat import convert_official_state_dict, load_official, official_sn_kwargs

C = 5


def official_ban2d(x, sd, training, m=0.1, eps=1e-5):
    """BAN2d: BN without affine, scaled by weight * sigmoid(avg * w_re + b_re), plus bias."""
    if training:
        mu, var = x.mean((0, 2, 3)), x.var((0, 2, 3), correction=0)
    else:
        mu, var = sd["running_mean"], sd["running_var"]
    x_hat = (x - mu.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + eps)
    avg = x.mean((2, 3), keepdim=True)
    gate = torch.sigmoid(avg * sd["weight_readjust"] + sd["bias_readjust"])
    return x_hat * sd["weight"] * gate + sd["bias"]


def official_switchnorm(x, sd, training, m, eps=1e-5, using_bn=True, moving_average=True):
    """SwitchNorm*d as the authors compute it. 2d/3d: unbiased IN variance, LN/BN variances
    by E[x^2]-mean^2 pooling; 1d ((N, C) input, [LN, BN]): unbiased variances over C and
    over N. Running statistics: ``m * running + (1 - m) * batch`` without Bessel's factor,
    or, with ``moving_average=False``, the sums ``running + mean`` and
    ``running + mean^2 + var``. Returns the output and the updated running statistics (1, C)
    (None in eval or without BN)."""
    n, c = x.shape[:2]
    if x.dim() == 2:
        means, variances = [x.mean(1, keepdim=True)], [x.var(1, keepdim=True)]
        mean_bn, var_bn = x.mean(0, keepdim=True), x.var(0, keepdim=True)
    else:
        flat = x.reshape(n, c, -1)
        if flat.shape[-1] == 1:
            mean_in, var_in = flat.mean(-1), torch.zeros(n, c, dtype=x.dtype)
        else:
            mean_in, var_in = flat.mean(-1), flat.var(-1)
        temp = var_in + mean_in**2
        mean_ln = mean_in.mean(1, keepdim=True)
        var_ln = temp.mean(1, keepdim=True) - mean_ln**2
        means, variances = [mean_in, mean_ln], [var_in, var_ln]
        mean_bn = mean_in.mean(0, keepdim=True)
        var_bn = temp.mean(0, keepdim=True) - mean_bn**2
    running = None
    if using_bn:
        running_mean = sd["running_mean"].reshape(1, c)
        running_var = sd["running_var"].reshape(1, c)
        if not training:
            mean_bn, var_bn = running_mean, running_var
        elif moving_average:
            running = (
                m * running_mean + (1 - m) * mean_bn.detach(),
                m * running_var + (1 - m) * var_bn.detach(),
            )
        else:
            running = (
                running_mean + mean_bn.detach(),
                running_var + mean_bn.detach() ** 2 + var_bn.detach(),
            )
        means.append(mean_bn)
        variances.append(var_bn)
    wm, wv = torch.softmax(sd["mean_weight"], 0), torch.softmax(sd["var_weight"], 0)
    mean = sum(w * t for w, t in zip(wm, means))
    var = sum(w * t for w, t in zip(wv, variances))
    shape = (n, c) + (1,) * (x.dim() - 2)
    y = (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + eps)
    return y * sd["weight"].reshape(1, c, *shape[2:]) + sd["bias"].reshape(
        1, c, *shape[2:]
    ), running


def official_sn_helper(sd, batches, m):
    """The authors' batch-average helper: zero the buffers, run the batches through the
    layer in training mode (summing), divide by their number, subtract the squared mean."""
    sd = dict(sd)
    sd["running_mean"] = torch.zeros_like(sd["running_mean"])
    sd["running_var"] = torch.zeros_like(sd["running_var"])
    for x in batches:
        _, (sd["running_mean"], sd["running_var"]) = official_switchnorm(
            x, sd, True, m, moving_average=False
        )
    mean = sd["running_mean"] / len(batches)
    return mean, sd["running_var"] / len(batches) - mean**2


def random_official_ban(prefix="module.1."):
    return OrderedDict(
        {
            f"{prefix}weight": torch.rand(1, C, 1, 1, dtype=torch.float64) + 0.5,
            f"{prefix}bias": torch.randn(1, C, 1, 1, dtype=torch.float64),
            f"{prefix}weight_readjust": torch.randn(1, C, 1, 1, dtype=torch.float64),
            f"{prefix}bias_readjust": torch.randn(1, C, 1, 1, dtype=torch.float64) - 1,
            f"{prefix}running_mean": torch.randn(C, dtype=torch.float64),
            f"{prefix}running_var": torch.rand(C, dtype=torch.float64) + 0.5,
            f"{prefix}num_batches_tracked": torch.tensor(0),
        }
    )


@pytest.mark.parametrize("training", [True, False])
def test_iebn_checkpoint_reproduces_ban2d(training):
    conv = nn.Conv2d(3, C, 1).double()
    official = OrderedDict((f"module.0.{k}", v) for k, v in conv.state_dict().items())
    official.update(random_official_ban())
    model = nn.Sequential(nn.Conv2d(3, C, 1), normlab.IEBN2d(C)).double()
    load_official(model, {"state_dict": official})
    model.train(training)
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    layer_sd = {k[len("module.1."):]: v for k, v in official.items() if k.startswith("module.1.")}
    expected = official_ban2d(conv(x), layer_sd, training)
    torch.testing.assert_close(model(x), expected)


@pytest.mark.parametrize("era_momentum", [0.9, 0.997])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize(
    "cls, shape, weight_shape, running_shape, k",
    [
        (normlab.SwitchNorm2d, (4, C, 3, 5), (1, C, 1, 1), (1, C, 1), 3),
        (normlab.SwitchNorm3d, (4, C, 2, 3, 2), (1, C, 1, 1, 1), (1, C, 1), 3),
        (normlab.SwitchNorm1d, (6, C), (1, C), (1, C), 2),
    ],
)
def test_switchnorm_checkpoint_reproduces_the_authors_layer(
    cls, shape, weight_shape, running_shape, k, training, era_momentum
):
    official = OrderedDict(
        {
            "module.weight": torch.rand(weight_shape, dtype=torch.float64) + 0.5,
            "module.bias": torch.randn(weight_shape, dtype=torch.float64),
            "module.mean_weight": torch.randn(k, dtype=torch.float64),
            "module.var_weight": torch.randn(k, dtype=torch.float64),
            "module.running_mean": torch.randn(running_shape, dtype=torch.float64),
            "module.running_var": torch.rand(running_shape, dtype=torch.float64) + 0.5,
        }
    )
    layer = cls(C, **official_sn_kwargs(era_momentum)).double()
    load_official(layer, official)
    layer.train(training)
    x = torch.randn(shape, dtype=torch.float64) * 2 + 1
    sd = {k[len("module."):]: v for k, v in official.items()}
    expected, running = official_switchnorm(x, sd, training, era_momentum)
    torch.testing.assert_close(layer(x), expected)
    if training:
        torch.testing.assert_close(layer.running_mean, running[0].reshape(-1))
    assert layer.momentum == pytest.approx(1 - era_momentum)


def test_switchnorm_without_bn_part():
    official = {
        "weight": torch.ones(1, C, 1, 1),
        "bias": torch.zeros(1, C, 1, 1),
        "mean_weight": torch.randn(2),
        "var_weight": torch.randn(2),
    }
    layer = normlab.SwitchNorm2d(C, **official_sn_kwargs(using_bn=False))
    load_official(layer, official)
    x = torch.randn(3, C, 4, 4)
    expected, _ = official_switchnorm(x, official, True, 0.9, using_bn=False)
    torch.testing.assert_close(layer(x), expected)


def test_bin_checkpoint_loads_after_stripping_module():
    reference = normlab.BatchInstanceNorm2d(C)
    with torch.no_grad():
        reference.gate.uniform_()
    official = OrderedDict((f"module.{k}", v) for k, v in reference.state_dict().items())
    layer = normlab.BatchInstanceNorm2d(C)
    load_official(layer, official)
    x = torch.randn(3, C, 4, 4)
    torch.testing.assert_close(layer(x), reference(x))


def test_conversion_names_and_errors():
    converted = convert_official_state_dict(random_official_ban("module.layer1.0.bn1."))
    assert set(converted) == {
        f"layer1.0.bn1.{k}"
        for k in ("weight", "bias", "gate_weight", "gate_bias", "running_mean", "running_var",
                  "num_batches_tracked")
    }
    assert converted["layer1.0.bn1.gate_weight"].shape == (C,)
    bad = random_official_ban("")
    bad["weight"] = torch.ones(2, C, 1, 1)
    with pytest.raises(ValueError, match=r"weight: expected a per-channel tensor"):
        convert_official_state_dict(bad)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        official_sn_kwargs(momentum=3.0)
    with pytest.raises(RuntimeError, match="Missing key"):
        load_official(normlab.SwitchNorm2d(C), {"weight": torch.ones(C)})


SN_LAYOUTS = [
    (normlab.SwitchNorm1d, (6, C), (1, C), (1, C)),
    (normlab.SwitchNorm2d, (4, C, 3, 5), (1, C, 1, 1), (1, C, 1)),
    (normlab.SwitchNorm3d, (4, C, 2, 3, 2), (1, C, 1, 1, 1), (1, C, 1)),
]
SN_PARAMS = ("weight", "bias", "mean_weight", "var_weight")
EXACT = {"rtol": 1e-10, "atol": 1e-10}


def random_official_sn(cls, weight_shape, running_shape):
    k = 2 if cls is normlab.SwitchNorm1d else 3
    return {
        "weight": torch.rand(weight_shape, dtype=torch.float64) + 0.5,
        "bias": torch.randn(weight_shape, dtype=torch.float64),
        "mean_weight": torch.randn(k, dtype=torch.float64),
        "var_weight": torch.randn(k, dtype=torch.float64),
        "running_mean": torch.randn(running_shape, dtype=torch.float64),
        "running_var": torch.rand(running_shape, dtype=torch.float64) + 0.5,
    }


def assert_same_buffers(layer, sd):
    torch.testing.assert_close(layer.running_mean, sd["running_mean"].reshape(-1), **EXACT)
    torch.testing.assert_close(layer.running_var, sd["running_var"].reshape(-1), **EXACT)


@pytest.mark.parametrize("backend", ["reference", "fused"])
@pytest.mark.parametrize("moving_average", [True, False])
@pytest.mark.parametrize("era_momentum", [0.9, 0.997])
@pytest.mark.parametrize("cls, shape, weight_shape, running_shape", SN_LAYOUTS)
def test_training_on_from_an_authors_checkpoint_gives_their_numbers_step_for_step(
    cls, shape, weight_shape, running_shape, era_momentum, moving_average, backend
):
    torch.manual_seed(0)
    theirs = random_official_sn(cls, weight_shape, running_shape)
    kwargs = official_sn_kwargs(era_momentum, using_moving_average=moving_average)
    layer = cls(C, backend=backend, **kwargs).double()
    load_official(layer, {f"module.{k}": v for k, v in theirs.items()})
    assert layer.using_moving_average == moving_average
    for name in SN_PARAMS:
        theirs[name].requires_grad_()
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer.train()
    for _ in range(5):
        x = torch.randn(shape, dtype=torch.float64) * 2 + 1
        target = torch.randn(shape, dtype=torch.float64)
        ours_x, their_x = x.clone().requires_grad_(), x.clone().requires_grad_()
        y = layer(ours_x)
        (y * target).sum().backward()
        expected, running = official_switchnorm(
            their_x, theirs, True, era_momentum, moving_average=moving_average
        )
        (expected * target).sum().backward()
        torch.testing.assert_close(y, expected, **EXACT)
        torch.testing.assert_close(ours_x.grad, their_x.grad, **EXACT)
        for name in SN_PARAMS:
            torch.testing.assert_close(
                getattr(layer, name).grad, theirs[name].grad.reshape(-1), **EXACT
            )
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():
            for name in SN_PARAMS:
                theirs[name] -= 0.1 * theirs[name].grad
                theirs[name].grad = None
        theirs["running_mean"], theirs["running_var"] = running
        assert_same_buffers(layer, theirs)
    layer.eval()
    x = torch.randn(shape, dtype=torch.float64) * 2 + 1
    torch.testing.assert_close(
        layer(x), official_switchnorm(x, theirs, False, era_momentum)[0], **EXACT
    )


@pytest.mark.parametrize("cls, shape, weight_shape, running_shape", SN_LAYOUTS)
def test_update_norm_stats_is_the_authors_batch_average_helper(
    cls, shape, weight_shape, running_shape
):
    torch.manual_seed(1)
    theirs = random_official_sn(cls, weight_shape, running_shape)
    layer = cls(C, **official_sn_kwargs(0.997, using_moving_average=False)).double()
    load_official(layer, theirs)
    layer.eval()
    batches = [  # unequal sizes: the authors weight every batch 1, whatever its size
        torch.randn(shape[0] + extra, *shape[1:], dtype=torch.float64) * (i + 1) + i
        for i, extra in enumerate((0, -2, 3))
    ]
    assert normlab.update_norm_stats(layer, batches, num_batches=3) == 3
    theirs["running_mean"], theirs["running_var"] = official_sn_helper(theirs, batches, 0.997)
    assert_same_buffers(layer, theirs)
    assert not layer.training and layer.sums_running_stats and layer.summed_weight is None
    x = torch.randn(shape, dtype=torch.float64)
    torch.testing.assert_close(layer(x), official_switchnorm(x, theirs, False, 0.997)[0], **EXACT)


def test_authors_semantics_start_from_their_initial_state_and_say_so():
    layer = normlab.SwitchNorm2d(C, **official_sn_kwargs())
    assert torch.all(layer.running_var == 0) and torch.all(layer.running_mean == 0)
    layer.running_var.fill_(3.0)
    layer.reset_running_stats()
    assert torch.all(layer.running_var == 0)
    assert "semantics='authors'" in repr(layer)
    assert torch.all(normlab.SwitchNorm2d(C).running_var == 1)
    with pytest.raises(ValueError, match="semantics must be one of"):
        normlab.SwitchNorm2d(C, semantics="paper")


def test_default_semantics_keep_torch_running_variance():
    """Our default SN tracks the unbiased batch variance as torch's BatchNorm does; the
    authors' layer tracks the biased-by-construction variance it normalizes with."""
    x = torch.randn(4, C, 3, 5, dtype=torch.float64)
    ours = normlab.SwitchNorm2d(C, momentum=1.0).double()
    authors = normlab.SwitchNorm2d(C, **official_sn_kwargs(0.0)).double()
    ours(x)
    authors(x)
    torch.testing.assert_close(ours.running_var, x.var((0, 2, 3), correction=1))
    values = x[:, 0].numel()
    instance = x.reshape(4, C, -1).var(-1)
    expected = (instance + x.mean((2, 3)) ** 2).mean(0) - x.mean((0, 2, 3)) ** 2
    torch.testing.assert_close(authors.running_var, expected)
    assert not torch.allclose(authors.running_var, ours.running_var * (values - 1) / values)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("backend", ["reference", "fused"])
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_iebn_gate_values_are_the_forward_gate_in_the_layer_dtype(dim, backend, training):
    """Equal to float64 rounding (float32 would differ by ~1e-8)."""
    layer = normlab.norms.resolve_norm("iebn", dim)(C, backend=backend).double().train(training)
    with torch.no_grad():
        layer.gate_weight.normal_()
        layer.gate_bias.normal_()
    seen = []
    forward_gate = layer.gate
    layer.gate = lambda mean, params: seen.append(forward_gate(mean, params)) or seen[-1]
    x = torch.randn((4, C) + (3,) * dim, dtype=torch.float64) * 3 + 1
    layer(x)
    layer.gate = forward_gate
    values = layer.gate_values(x)
    assert values.dtype == torch.float64
    torch.testing.assert_close(values, seen[0].detach(), rtol=1e-15, atol=1e-15)
