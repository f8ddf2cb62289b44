"""Every export path for every registered norm, in training and in eval: torch.jit.trace,
torch.fx.symbolic_trace (normlab layers are leaf modules), torch.export, ONNX through both
exporters checked with onnxruntime, torch.compile (inductor, one case), FX and PT2E
quantization preparation of a converted ResNet, and torch.jit.script (layers, options,
models, save/load) against eager."""

import copy
import inspect
import io
import logging
import math
import re
import warnings

import pytest
import torch
from torch.export import Dim

import normlab
from normlab.models.cifar_resnet import CifarResNet
from normlab.models.resnet_blocks import BasicBlock
from normlab.norms import NormBase
from tests.norms.tables import EveryNorm

# torch 2.14 deprecates torch.jit.script (FutureWarning on every call); it still works
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")

C = 4
NORMS = normlab.list_norms()
MODES = {"train": True, "eval": False}


def layer_for(name, dtype=torch.float64):
    """A 2d layer with perturbed parameters and running statistics."""
    return perturbed(normlab.create_norm(name, C), dtype)


def perturbed(layer, dtype=torch.float64):
    """``layer`` in ``dtype`` with perturbed parameters and running statistics, so that
    every term of its coefficients matters."""
    torch.manual_seed(0)
    layer = layer.to(dtype)
    with torch.no_grad():
        for key, p in layer.named_parameters():
            noise = 0.2 * torch.randn_like(p)
            p.copy_(torch.rand_like(p) * 0.6 + 0.2 if key == "gate" else p + noise)
        for key, b in layer.named_buffers():
            if key == "running_mean":
                b.normal_()
            elif key == "running_var":
                b.uniform_(0.5, 2.0)
    return layer


def net_for(name, training, dtype=torch.float64):
    """conv -> norm, in the given mode."""
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(3, C, 3, padding=1).to(dtype)
    return torch.nn.Sequential(conv, layer_for(name, dtype)).train(training)


def assert_same_state(a, b):
    for (key, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(y, x, msg=key)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("name", NORMS)
def test_jit_trace_matches_eager_at_other_shapes(name, mode):
    net = net_for(name, MODES[mode])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(net, torch.randn(3, 3, 4, 5, dtype=torch.float64))
    eager = copy.deepcopy(net)  # tracing ran one forward (and moved the statistics)
    for shape in [(3, 3, 4, 5), (5, 3, 6, 3)]:
        x = torch.randn(shape, dtype=torch.float64)
        torch.testing.assert_close(traced(x), eager(x))
        assert_same_state(traced, eager)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("name", NORMS)
def test_fx_symbolic_trace_records_the_layer_as_a_leaf(name, mode):
    net = net_for(name, MODES[mode])
    graph_module = torch.fx.symbolic_trace(net)
    calls = [n.target for n in graph_module.graph.nodes if n.op == "call_module"]
    assert calls == ["0", "1"]
    assert isinstance(graph_module.get_submodule("1"), NormBase)
    eager = copy.deepcopy(net)
    x = torch.randn(3, 3, 4, 5, dtype=torch.float64)
    torch.testing.assert_close(graph_module(x), eager(x))
    assert_same_state(graph_module, eager)
    graph_module.train(not MODES[mode])  # the traced module still switches mode
    eager.train(not MODES[mode])
    torch.testing.assert_close(graph_module(x), eager(x))


def test_fx_trace_of_a_bare_layer_says_what_to_trace():
    with pytest.raises(torch.fx.proxy.TraceError, match="Sequential"):
        torch.fx.symbolic_trace(normlab.BatchNorm2d(C))


DIMS = (1, 2, 3)
SHAPES = {1: [(3, C), (5, C, 4)], 2: [(3, C, 4, 5), (5, C, 3, 2)], 3: [(3, C, 2, 3, 4)]}


def assert_scripted_like_eager(scripted, eager, shapes, training, steps=2):
    """Outputs, input gradients and state (running statistics, ``num_batches_tracked``)
    of ``scripted`` equal those of ``eager`` over ``steps`` forwards per shape (float64);
    an input eager refuses raises the same message in the scripted module."""
    scripted.train(training)
    eager.train(training)
    for shape in shapes:
        for _ in range(steps):
            x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
            try:
                y_eager = eager(x)
            except ValueError as error:  # e.g. BIN's instance statistics of (N, C) input
                with pytest.raises(torch.jit.Error, match=re.escape(str(error))):
                    scripted(x)
                continue
            y = scripted(x)
            torch.testing.assert_close(y, y_eager, rtol=0, atol=1e-12)
            g = torch.randn_like(y)
            torch.testing.assert_close(
                torch.autograd.grad(y, x, g)[0], torch.autograd.grad(y_eager, x, g)[0],
                rtol=0, atol=1e-10,
            )
            state, expected = scripted.state_dict(), eager.state_dict()
            # SN's "hard" flag is an attribute of a scripted module, not a state-dict entry
            assert list(state) == [k for k in expected if not k.endswith("hard")]
            for key, value in state.items():
                torch.testing.assert_close(value, expected[key], rtol=0, atol=1e-12, msg=key)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("name", NORMS)
def test_jit_script_matches_eager(name, dim, mode):
    """The scripted layer runs the reference path: same outputs, gradients and running
    statistics as the eager layer (fused backend), step after step."""
    layer = perturbed(normlab.create_norm(name, C, dim=dim))
    shapes = SHAPES[dim]
    if isinstance(layer, normlab.norms.standard.InstanceNorm):  # 2D: unbatched (C, L)
        shapes = [s for s in shapes if len(s) > 2] + [(C,) + shapes[-1][2:]]
    eager = copy.deepcopy(layer)
    scripted = torch.jit.script(layer)
    assert isinstance(scripted, torch.jit.ScriptModule)
    assert_scripted_like_eager(scripted, eager, shapes, MODES[mode])


MOMENTUM_NORMS = [
    n for n in NORMS
    if "momentum" in inspect.signature(normlab.norms.resolve_norm(n, 2)).parameters
]


@pytest.mark.parametrize("name", MOMENTUM_NORMS)
def test_jit_script_cumulative_average_counts_steps_as_eager(name):
    """``momentum=None``: the running statistics are the average over
    ``num_batches_tracked`` steps, counted in the scripted module as in eager."""
    layer = perturbed(
        normlab.create_norm(name, C, momentum=None, track_running_stats=True)
    )
    eager = copy.deepcopy(layer)
    scripted = torch.jit.script(layer)
    assert_scripted_like_eager(scripted, eager, SHAPES[2], training=True, steps=3)
    assert_scripted_like_eager(scripted, eager, SHAPES[2], training=False, steps=1)


VARIANTS = {
    "bn-virtual-batches": ("bn", {"virtual_batch_size": 2}),
    "bn-untracked": ("bn", {"track_running_stats": False}),
    "bn-no-affine": ("bn", {"affine": False}),
    "in-tracked": ("in", {"track_running_stats": True}),
    "gn-2-groups": ("gn", {"num_groups": 2}),
    "sn-with-gn": ("sn", {"normalizers": ("in", "ln", "bn", "gn"), "num_groups": 2}),
    "sn-authors-summed": ("sn", {"semantics": "authors", "using_moving_average": False}),
    "iebn-fc-both-softmax": ("iebn", {"operator": "fc", "reduction": 2, "position": "both",
                                      "activation": "softmax"}),
    "iebn-identity-tanh": ("iebn", {"operator": "identity", "activation": "tanh"}),
}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_jit_script_matches_eager_for_layer_options(variant, mode):
    name, kwargs = VARIANTS[variant]
    layer = perturbed(normlab.create_norm(name, C, **kwargs))
    eager = copy.deepcopy(layer)
    assert_scripted_like_eager(torch.jit.script(layer), eager, SHAPES[2], MODES[mode])


@pytest.mark.parametrize("name", NORMS)
def test_jit_script_with_noise_hardened_or_frozen_matches_eager(name):
    """Settings made after construction are compiled in: the noise attack, hardened SN
    ratios, a frozen BN (``normlab.freeze_norm``)."""
    layer = perturbed(normlab.create_norm(name, C))
    layer.noise = (0.5, 0.25)
    if name == "sn":
        layer.harden()
    eager = copy.deepcopy(layer)
    assert_scripted_like_eager(torch.jit.script(layer), eager, SHAPES[2], training=True)
    frozen = perturbed(normlab.create_norm(name, C))
    normlab.freeze_norm(frozen)
    eager = copy.deepcopy(frozen)
    assert_scripted_like_eager(torch.jit.script(frozen), eager, SHAPES[2], training=True)


@pytest.mark.parametrize("name", NORMS)
def test_jit_script_save_load_round_trip(name, tmp_path):
    """A saved and loaded scripted layer computes what the scripted one does, in training
    (moving its running statistics alike) and in eval."""
    layer = perturbed(normlab.create_norm(name, C))
    scripted = torch.jit.script(layer)
    torch.jit.save(scripted, tmp_path / "layer.pt")
    loaded = torch.jit.load(tmp_path / "layer.pt")
    assert_scripted_like_eager(loaded, scripted, SHAPES[2], training=True)
    assert_scripted_like_eager(loaded, scripted, SHAPES[2], training=False)
    eager = copy.deepcopy(layer)  # the original shares its tensors with the scripted one
    assert_scripted_like_eager(loaded, eager, SHAPES[2], training=True, steps=1)


def test_jit_script_resnet_with_every_norm_matches_eager():
    """A whole (narrow) ResNet whose norms cycle through every registered norm scripts
    and matches eager in training and eval, also after a save/load round trip."""
    model = resnet_with_every_norm().to(torch.float64)
    eager = copy.deepcopy(model)
    scripted = torch.jit.script(model)
    assert_scripted_like_eager(scripted, eager, [(2, 3, 8, 8)], training=True)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    assert_scripted_like_eager(loaded, eager, [(2, 3, 8, 8)], training=False, steps=1)


@pytest.mark.parametrize("name", NORMS)
def test_jit_script_norm_act_layer_matches_eager(name):
    """A norm+act layer (``act(drop(norm(x)))``, timm's convention) scripts too."""
    layer = perturbed(normlab.norms.norm_act(name, act_layer=torch.nn.SiLU)(C))
    eager = copy.deepcopy(layer)
    assert_scripted_like_eager(torch.jit.script(layer), eager, SHAPES[2], training=True)


def test_jit_script_refuses_cross_process_statistics_with_a_clear_error():
    layer = normlab.BatchNorm2d(C)
    layer.statistics_sync = lambda mean, var, samples: (mean, var, samples)
    with pytest.raises(RuntimeError, match="cannot compile BatchNorm2d with statistics_sync"):
        torch.jit.script(torch.nn.Sequential(layer))


@pytest.mark.parametrize("name", NORMS)
def test_jit_script_checks_inputs_as_eager(name):
    """Shape errors raise in the scripted layer too (TorchScript's error wraps the same
    message), and an empty batch gives an empty output."""
    scripted = torch.jit.script(normlab.create_norm(name, C))
    with pytest.raises(torch.jit.Error, match=r"expected 4 channels \(dim 1\), got 3"):
        scripted(torch.randn(2, 3, 5, 5))
    assert scripted(torch.randn(0, C, 5, 5)).shape == (0, C, 5, 5)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("name", NORMS)
def test_torch_export_with_dynamic_shapes_matches_eager(name, mode):
    """Batch and spatial sizes symbolic: the layers' checks add no failing guard."""
    net = net_for(name, MODES[mode])
    eager = copy.deepcopy(net)
    x = torch.randn(3, 3, 4, 5, dtype=torch.float64)
    dims = {0: Dim("n", min=2), 2: Dim("h", min=2), 3: Dim("w", min=2)}
    exported = torch.export.export(net, (x,), dynamic_shapes=(dims,)).module()
    for shape in [(3, 3, 4, 5), (5, 3, 6, 3)]:
        x = torch.randn(shape, dtype=torch.float64)
        torch.testing.assert_close(exported(x), eager(x))
        assert_same_state(exported, eager)


def ort_outputs(model, x, dynamo, training):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    if dynamo:
        pytest.importorskip("onnxscript")
        logging.disable(logging.WARNING)
        try:
            program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
        finally:
            logging.disable(logging.NOTSET)
        data = program.model_proto.SerializeToString()
    else:
        buffer = io.BytesIO()
        mode = torch.onnx.TrainingMode.TRAINING if training else torch.onnx.TrainingMode.EVAL
        torch.onnx.export(
            model, (x,), buffer, dynamo=False, training=mode, do_constant_folding=not training
        )
        data = buffer.getvalue()
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})


def chain_of_all_norms(training, dtype=torch.float32):
    """conv -> norm for every registered norm in turn (one export covers them all)."""
    torch.manual_seed(1)
    layers = [torch.nn.Conv2d(3, C, 3, padding=1)]
    for name in NORMS:
        layers += [layer_for(name, torch.float32), torch.nn.Conv2d(C, C, 3, padding=1)]
    return torch.nn.Sequential(*layers).to(dtype).train(training)


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("mode", list(MODES))
def test_onnx_export_runs_in_onnxruntime_like_eager(mode, exporter):
    """Every norm, float32 (onnxruntime's dtype); in training mode the graph normalizes with
    the batch statistics as eager does (ONNX graphs hold no state: the running statistics
    are not updated, as for torch's own BatchNorm2d)."""
    net = chain_of_all_norms(MODES[mode])
    x = torch.randn(3, 3, 4, 5)
    with torch.no_grad():
        expected = copy.deepcopy(net)(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outputs = ort_outputs(net, x, exporter == "dynamo", MODES[mode])
    if MODES[mode] and exporter == "torchscript":
        # its trace runs one training forward, which moves the running statistics before
        # they become the graph's constants (BRN's training output reads them)
        with torch.no_grad():
            expected = copy.deepcopy(net)(x)
    assert len(outputs) == 1
    torch.testing.assert_close(torch.from_numpy(outputs[0]), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_inductor_fullgraph_matches_eager_in_training():
    net = net_for("sn", True, torch.float32)
    eager = copy.deepcopy(net)
    compiled = torch.compile(net, fullgraph=True)
    x = torch.randn(3, 3, 4, 5, requires_grad=True)
    y, y_eager = compiled(x), eager(x)
    torch.testing.assert_close(y, y_eager, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    torch.testing.assert_close(
        torch.autograd.grad(y, x, g)[0], torch.autograd.grad(y_eager, x, g)[0],
        rtol=1e-4, atol=1e-5,
    )
    assert_same_state(net, eager)


def resnet_with_every_norm():
    """The smallest narrow CIFAR ResNet (6·blocks + 3 norm layers) whose norms, built by its
    constructor, cycle through every registered norm."""
    torch.manual_seed(0)
    blocks = max(1, math.ceil((len(NORMS) - 3) / 6))
    norm = EveryNorm()
    model = CifarResNet(BasicBlock, blocks, widths=(4, 8, 8), stem_width=4, num_classes=3,
                        norm=norm)
    assert set(norm.built) == set(NORMS)
    return model.eval()


@pytest.mark.slow
def test_fx_quantization_prepares_and_converts_a_resnet():
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    model = resnet_with_every_norm()
    x = torch.randn(2, 3, 8, 8)
    prepared = prepare_fx(copy.deepcopy(model), get_default_qconfig_mapping("x86"), (x,))
    assert any(isinstance(m, NormBase) for m in prepared.modules())
    with torch.no_grad():
        torch.testing.assert_close(prepared(x), model(x))  # observers do not change values
        quantized = convert_fx(prepared)
        assert quantized(x).shape == (2, 3)


@pytest.mark.slow
def test_pt2e_quantization_prepares_and_converts_a_resnet():
    """PT2E left torch for torchao (torch 2.14 has no torch.ao.quantization.quantize_pt2e)."""
    pytest.importorskip("torchao")
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    model = resnet_with_every_norm()
    x = torch.randn(2, 3, 8, 8)
    captured = torch.export.export(copy.deepcopy(model), (x,)).module()
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(captured, quantizer)
    with torch.no_grad():
        torch.testing.assert_close(prepared(x), model(x), rtol=1e-5, atol=1e-6)
        quantized = convert_pt2e(prepared)
        assert quantized(x).shape == (2, 3)
