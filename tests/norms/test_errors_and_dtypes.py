"""Bad input raises a clear error; half precision and channels_last inputs work."""

import copy
import re

import pytest
import torch

import normlab
from normlab.norms import NormInputError
from tests.norms.tables import batch_pooling_norms, instance_statistics_norms

C = 4
ALL = normlab.list_norms()


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dim, bad_shape", [(1, (2, C, 3, 3)), (2, (2, C, 3)), (3, (2, C, 3, 3))])
def test_wrong_number_of_dimensions(name, dim, bad_shape):
    layer = normlab.create_norm(name, C, dim=dim)
    ndims = layer.input_ndims()  # None: any (N, C, *), as torch's GroupNorm
    if ndims is None or len(bad_shape) in ndims:  # e.g. unbatched InstanceNorm input
        bad_shape = (C,)
    with pytest.raises(NormInputError, match=rf"expected a .*got a {len(bad_shape)}D input"):
        layer(torch.randn(bad_shape))


@pytest.mark.parametrize("name", ALL)
def test_wrong_number_of_channels_names_expected_and_actual(name):
    with pytest.raises(NormInputError, match=r"expected 4 channels \(dim 1\), got 3"):
        normlab.create_norm(name, C)(torch.randn(2, 3, 5, 5))


@pytest.mark.parametrize("name", batch_pooling_norms())
def test_one_value_per_channel_in_training(name):
    layer = normlab.create_norm(name, C, dim=2)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        layer(torch.randn(1, C, 1, 1))
    layer.eval()
    assert layer(torch.randn(1, C, 1, 1)).shape == (1, C, 1, 1)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("shape", [(0, C, 5, 5), (3, C, 0, 5)])
def test_empty_inputs_give_empty_outputs_and_leave_statistics_alone(name, backend, shape):
    """As torch's BatchNorm, a training forward on an empty batch only counts the step."""
    layer = normlab.create_norm(name, C, backend=backend)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    if getattr(layer, "pools_batch", False) and layer.num_batches_tracked is not None:
        before["num_batches_tracked"] += 1
    for training in (True, False):
        x = torch.randn(shape, requires_grad=True)
        y = layer.train(training)(x)
        y.sum().backward()
        assert y.shape == shape and x.grad.shape == shape
    for key, value in layer.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_virtual_batch_of_one_sample_of_one_value_is_rejected():
    layer = normlab.BatchNorm1d(C, virtual_batch_size=1)
    with pytest.raises(ValueError, match="in sub-batches of 1"):
        layer(torch.randn(4, C))


@pytest.mark.parametrize("name", instance_statistics_norms())
def test_instance_statistics_need_a_spatial_axis(name):
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        normlab.create_norm(name, C, dim=1)(torch.randn(4, C, 1))


def test_switchnorm_with_in_rejects_flat_input():
    with pytest.raises(ValueError, match="IN statistics are undefined"):
        normlab.SwitchNorm1d(C, normalizers=("in", "ln", "bn"))(torch.randn(4, C))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.bool])
def test_integer_inputs(name, dtype):
    with pytest.raises(NormInputError, match="expected a floating-point input"):
        normlab.create_norm(name, C)(torch.ones(2, C, 3, 3, dtype=dtype))


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match=re.escape("valid names: bn, in, ln, gn, sn, iebn, bin")):
        normlab.create_norm("batchnrom", C)
    with pytest.raises(ValueError, match="valid: linear, identity, fc"):
        normlab.IEBN2d(C, operator="conv")
    with pytest.raises(ValueError, match="distinct names from in, ln, bn, gn"):
        normlab.SwitchNorm2d(C, normalizers=("bn", "wn"))
    with pytest.raises(ValueError, match="positive divisor of the 4 channels"):
        normlab.GroupNorm2d(C, num_groups=3)
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        normlab.BatchNorm2d(C, backend="fast")(torch.randn(2, C, 2, 2))


def test_registry_accepts_names_aliases_classes_and_partials():
    import functools

    assert type(normlab.create_norm("SwitchNorm", C, dim=3)) is normlab.SwitchNorm3d
    assert type(normlab.create_norm("batch_instance", C, dim=1)) is normlab.BatchInstanceNorm1d
    assert type(normlab.create_norm(normlab.IEBN2d, C)) is normlab.IEBN2d
    fc = normlab.create_norm(functools.partial(normlab.IEBN2d, operator="fc"), C)
    assert fc.operator == "fc"
    assert normlab.create_norm("gn", 64).num_groups == 32
    assert normlab.create_norm("gn", 16).num_groups == 16


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_use_float32_statistics(name, dtype):
    layer = normlab.create_norm(name, C)
    x = torch.randn(4, C, 5, 5) * 4 + 3
    xh = x.to(dtype).requires_grad_()
    y = layer(xh)
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), layer(xh.detach().float()), atol=0.05, rtol=0.02)
    y.float().sum().backward()
    assert xh.grad.dtype == dtype and torch.isfinite(xh.grad.float()).all()


@pytest.mark.parametrize("backend", ["reference", "fused"])
@pytest.mark.parametrize("name", ALL)
def test_channels_last_inputs(name, backend):
    layer = normlab.create_norm(name, C, backend=backend).double()
    x = torch.randn(4, C, 5, 3, dtype=torch.float64)
    xl = x.to(memory_format=torch.channels_last).requires_grad_()
    xc = x.clone().requires_grad_()
    y_last, y = copy.deepcopy(layer)(xl), layer(xc)  # both from the same running statistics
    torch.testing.assert_close(y_last, y)
    g = torch.randn_like(y)
    torch.testing.assert_close(
        torch.autograd.grad(y_last, xl, g)[0], torch.autograd.grad(y, xc, g)[0]
    )


def test_switchnorm_on_one_by_one_maps_is_finite():
    sn = normlab.SwitchNorm2d(C, unbiased_instance_var=True)
    x = torch.randn(8, C, 1, 1, requires_grad=True)
    y = sn(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert torch.isfinite(sn.mean_weight.grad).all()
