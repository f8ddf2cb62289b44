"""convert_norm, param_groups, post_step, update_norm_stats, norm_summary, set_* helpers."""

import pytest
import torch
from torch import nn

import normlab
from normlab.norms import NormBase


def small_cnn():
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8, eps=1e-3, momentum=0.2)),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 6),
        nn.BatchNorm1d(6),
    )
    model.train()
    for _ in range(3):
        model(torch.randn(16, 3, 6, 6))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
    return model.eval()


def test_convert_bn_to_bn_preserves_eval_outputs():
    model = small_cnn()
    x = torch.randn(4, 3, 6, 6)
    expected = model(x)
    converted = normlab.convert_norm(model, "bn")
    assert converted is model
    layers = [m for m in model.modules() if isinstance(m, NormBase)]
    assert [type(m) for m in layers] == [normlab.BatchNorm2d] * 2 + [normlab.BatchNorm1d]
    assert layers[1].eps == 1e-3 and layers[1].momentum == 0.2
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert not model.training
    torch.testing.assert_close(model(x), expected)


@pytest.mark.parametrize("name", [n for n in normlab.list_norms() if n != "bn"])
def test_convert_swaps_every_layer_and_carries_weights(name):
    model = small_cnn()
    weights = [m.weight.clone() for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    normlab.convert_norm(model, name)
    layers = [m for m in model.modules() if isinstance(m, NormBase)]
    assert len(layers) == 3
    expected = normlab.norms.resolve_norm(name, 2)
    assert all(type(m) is expected for m in layers[:2])
    for layer, weight in zip(layers, weights):
        torch.testing.assert_close(layer.weight, weight)
    if issubclass(expected, normlab.norms.BatchNorm):  # BN's kin (IEBN, BIN, BRN): BN's buffers
        torch.testing.assert_close(layers[0].running_mean, model[1].running_mean)
    normlab.convert_norm(model, "bn", momentum=0.5)
    back = [m for m in model.modules() if isinstance(m, NormBase)]
    assert [type(m) for m in back] == [normlab.BatchNorm2d] * 2 + [normlab.BatchNorm1d]
    assert all(m.momentum == 0.5 for m in back)


def test_convert_a_lone_layer_and_kwargs_override():
    new = normlab.convert_norm(nn.BatchNorm2d(4), "iebn", operator="fc", reduction=2)
    assert isinstance(new, normlab.IEBN2d) and new.operator == "fc"


def test_param_groups_honour_roles():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        normlab.BatchInstanceNorm2d(4),
        normlab.SwitchNorm2d(4),
        normlab.IEBN2d(4),
    )
    groups = {g["role"]: g for g in normlab.param_groups(model, lr=0.1, weight_decay=1e-4)}
    assert groups["gate"]["lr"] == pytest.approx(1.0) and groups["gate"]["weight_decay"] == 0.0
    assert groups["gate"]["params"] == [model[1].gate]
    assert groups["default"]["lr"] == 0.1 and len(groups["default"]["params"]) == 2
    assert groups["affine"]["weight_decay"] == 1e-4
    assert groups["switch"]["params"] == [model[2].mean_weight, model[2].var_weight]
    assert groups["iebn_gate"]["params"] == [model[3].gate_weight, model[3].gate_bias]
    counted = sum(len(g["params"]) for g in groups.values())
    assert counted == len(list(model.parameters()))
    custom = {
        g["role"]: g
        for g in normlab.param_groups(
            model, 0.1, 1e-4, role_lr_scale={"switch": 0.1}, role_weight_decay={"iebn_gate": 0},
            norm_weight_decay=0.0,
        )
    }
    assert custom["switch"]["lr"] == pytest.approx(0.01)
    assert custom["iebn_gate"]["weight_decay"] == 0
    assert custom["affine"]["weight_decay"] == 0.0
    torch.optim.SGD(normlab.param_groups(model, 0.1, 1e-4), momentum=0.9)


def test_post_step_clamps_bin_gates():
    layer = normlab.BatchInstanceNorm2d(3)
    with torch.no_grad():
        layer.gate.copy_(torch.tensor([-0.5, 0.3, 1.7]))
    normlab.post_step(nn.Sequential(layer))
    assert layer.gate.tolist() == pytest.approx([0.0, 0.3, 1.0])


def _layers_with_running_stats():
    """(name, dim, factory) for every registered norm and dim that keeps running statistics
    (built with ``track_running_stats=True`` where the layer takes it), plus torch's BN."""
    cases = []
    for name in normlab.list_norms():
        for dim in (1, 2, 3):
            cls = normlab.norms.resolve_norm(name, dim)
            try:
                cls(3, track_running_stats=True, momentum=0.1)
            except TypeError:
                continue
            cases.append((name, dim, lambda c=cls: c(3, track_running_stats=True, momentum=0.1)))
    torch_bn = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
    cases += [("torch-bn", d, lambda c=c: c(3, momentum=0.1)) for d, c in torch_bn.items()]
    return cases


@pytest.mark.parametrize("virtual", [None, 3])
@pytest.mark.parametrize(
    "name, dim, factory", _layers_with_running_stats(), ids=lambda v: str(v)[:12]
)
def test_update_norm_stats_gives_the_pooled_statistics_and_restores_everything(
    name, dim, factory, virtual
):
    """running_mean/var = mean and unbiased variance of all values the batches bring."""
    layer = factory().double()
    model = nn.Sequential(layer).eval()
    if virtual is not None:
        if not hasattr(layer, "virtual_batch_size"):
            pytest.skip("torch's BN has no virtual batches")
        normlab.set_virtual_batch_size(model, virtual)
    spatial = {1: (4,), 2: (3, 4), 3: (2, 3, 2)}[dim]
    sizes = (8, 8, 5, 8, 8)
    batches = [
        torch.randn(n, 3, *spatial, dtype=torch.float64) * (i + 1) + i
        for i, n in enumerate(sizes)
    ]
    used = normlab.update_norm_stats(model, iter(batches), num_batches=4)
    assert used == 4
    values = torch.cat(batches[:4]).transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(layer.running_mean, values.mean(1))
    torch.testing.assert_close(layer.running_var, values.var(1, correction=1))
    assert not model.training and not layer.training
    assert layer.momentum == 0.1
    if getattr(layer, "pools_batch", True):  # (instance norm counts as torch's does)
        assert int(layer.num_batches_tracked) == 4
    assert getattr(layer, "sums_running_stats", False) is False


def test_switchnorm_batch_average_inference():
    sn = normlab.SwitchNorm2d(3, using_moving_average=False)
    sn(torch.randn(8, 3, 4, 4) + 5)
    assert torch.all(sn.running_mean == 0)
    normlab.update_norm_stats(sn, [(torch.randn(8, 3, 4, 4) + 5, None)], num_batches=1)
    assert torch.all(sn.running_mean > 4) and not sn.update_running_stats
    with pytest.raises(ValueError, match="no batches"):
        normlab.update_norm_stats(sn, [], num_batches=3)


def test_update_norm_stats_restores_modes_on_error():
    model = nn.Sequential(normlab.BatchNorm2d(3), nn.Linear(2, 2)).eval()
    with pytest.raises(RuntimeError):
        normlab.update_norm_stats(model, [torch.randn(4, 3, 2, 3)], num_batches=1)
    assert not model[0].training and model[0].momentum == 0.1


def test_norm_summary_reports_ratios_gates_and_gate_values():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 1),
        normlab.SwitchNorm2d(4),
        normlab.BatchInstanceNorm2d(4),
        normlab.IEBN2d(4),
        nn.Identity(),
    )
    with torch.no_grad():
        model[1].mean_weight.copy_(torch.tensor([0.0, 0.0, 2.0]))
        model[2].gate.copy_(torch.tensor([0.0, 0.2, 0.9, 1.0]))
    summary = normlab.norm_summary(model, inputs=torch.randn(4, 3, 5, 5))
    sn, bin_, iebn = summary
    assert sn["name"] == "1" and sn["type"] == "SwitchNorm2d"
    assert sn["mean_ratios"][2] == pytest.approx(torch.softmax(torch.tensor([0, 0, 2.0]), 0)[2])
    assert sn["var_ratios"] == pytest.approx([1 / 3] * 3)
    assert bin_["gate"]["min"] == 0.0 and bin_["fraction_batch"] == 0.5
    assert iebn["gate_weight"]["mean"] == 0.0
    assert iebn["gate_values"]["mean"] == pytest.approx(torch.sigmoid(torch.tensor(-1.0)).item())
    assert "gate_values" not in normlab.norm_summary(model)[2]


def test_set_virtual_batch_size_on_a_model():
    model = nn.Sequential(normlab.BatchNorm2d(3), normlab.LayerNorm2d(3), normlab.IEBN2d(3))
    normlab.set_virtual_batch_size(model, 2)
    assert model[0].virtual_batch_size == 2 and model[2].virtual_batch_size == 2
    with pytest.raises(ValueError, match=">= 1"):
        normlab.set_virtual_batch_size(model, 0)
