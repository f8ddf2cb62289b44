"""Every export path for every registered norm, in training and in eval: torch.jit.trace,
torch.fx.symbolic_trace (normlab layers are leaf modules), torch.export, ONNX through both
exporters checked with onnxruntime, torch.compile (inductor, one case), FX and PT2E
quantization preparation of a converted ResNet, and torch.jit.script's clear refusal."""

import copy
import io
import logging
import warnings

import pytest
import torch
from torch.export import Dim

import normlab
from normlab.norms import NormBase

C = 4
NORMS = normlab.list_norms()
MODES = {"train": True, "eval": False}


def layer_for(name, dtype=torch.float64):
    """A 2d layer with perturbed parameters and running statistics, so that every term of
    its coefficients matters."""
    torch.manual_seed(0)
    layer = normlab.create_norm(name, C).to(dtype)
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


def test_jit_script_refuses_with_a_clear_error():
    with pytest.raises(RuntimeError, match="torch.jit.script cannot compile BatchNorm2d.*fuse"):
        torch.jit.script(torch.nn.Sequential(normlab.BatchNorm2d(C)))


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
    """normlab's resnet20 (narrow) whose norms cycle through every registered norm."""
    torch.manual_seed(0)
    model = normlab.create_model(
        "resnet20", num_classes=3, norm="bn", widths=(4, 8, 8), stem_width=4
    )
    names = [n for n, m in model.named_modules() if isinstance(m, NormBase)]
    for i, qualified in enumerate(names):
        parent, _, child = qualified.rpartition(".")
        old = model.get_submodule(qualified)
        new = normlab.create_norm(NORMS[i % len(NORMS)], old.num_features)
        setattr(model.get_submodule(parent), child, new)
    assert {type(m) for m in model.modules()} >= {normlab.norms.resolve_norm(n) for n in NORMS}
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
