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


def official_switchnorm(x, sd, training, m, eps=1e-5, using_bn=True):
    """SwitchNorm*d as the authors compute it (unbiased IN variance, E[x^2]-mean^2 pooling,
    running = m * running + (1 - m) * batch). Returns output and updated running stats."""
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    if flat.shape[-1] == 1:
        mean_in, var_in = flat.mean(-1), torch.zeros(n, c, dtype=x.dtype)
    else:
        mean_in, var_in = flat.mean(-1), flat.var(-1)
    temp = var_in + mean_in**2
    mean_ln = mean_in.mean(1, keepdim=True)
    var_ln = temp.mean(1, keepdim=True) - mean_ln**2
    means, variances = [mean_in, mean_ln], [var_in, var_ln]
    running = None
    if using_bn:
        if training:
            mean_bn = mean_in.mean(0, keepdim=True)
            var_bn = temp.mean(0, keepdim=True) - mean_bn**2
            running = (
                m * sd["running_mean"].reshape(1, c) + (1 - m) * mean_bn,
                m * sd["running_var"].reshape(1, c) + (1 - m) * var_bn,
            )
        else:
            mean_bn, var_bn = sd["running_mean"].reshape(1, c), sd["running_var"].reshape(1, c)
        means.append(mean_bn)
        variances.append(var_bn)
    if x.dim() == 2:
        means, variances = means[1:], variances[1:]
    wm, wv = torch.softmax(sd["mean_weight"], 0), torch.softmax(sd["var_weight"], 0)
    mean = sum(w * t for w, t in zip(wm, means))
    var = sum(w * t for w, t in zip(wv, variances))
    shape = (n, c) + (1,) * (x.dim() - 2)
    y = (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + eps)
    return y * sd["weight"].reshape(1, c, *shape[2:]) + sd["bias"].reshape(
        1, c, *shape[2:]
    ), running


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
