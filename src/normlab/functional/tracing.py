"""Which code path a graph capture sees: plain torch ops, or the layer as one opaque call.

Graph captures cannot record the fused backend (:class:`~normlab.functional.affine.
AffineNormFunction` takes a Python coefficient closure, which ``torch.jit.trace`` rejects,
and its CPU kernels call torch's batch-norm ops with ``out=`` arguments). Under every
capture that records torch ops one by one — ``torch.compile`` and ``torch.export`` (dynamo,
hence also ``torch.onnx.export(dynamo=True)`` and PT2E quantization), and ``torch.jit.trace``
(hence the TorchScript-based ``torch.onnx.export(dynamo=False)``) — the plain-ops path is
taken instead (:func:`plain_ops_required`); under ``torch.jit.trace`` the moments are also
pooled with plain ops (:func:`~normlab.functional.pool_moments`), since the tracer would
record the pooling's autograd Function as an opaque Python op.

``torch.jit.script`` compiles a layer's forward with the same plain ops, calling the
coefficient methods directly (see :class:`~normlab.norms.NormBase`); the fused autograd
Function stays outside the compiled code.

``torch.fx.symbolic_trace`` is different: it runs Python on :class:`torch.fx.Proxy` values
that have no shape, dtype or mode, so shape checks and statistics choices cannot run. A
normlab layer therefore records itself as one ``call_module`` node, exactly as FX records
torch's own norms (``nn.BatchNorm2d`` is an FX leaf module); see :func:`fx_leaf`. The
traced GraphModule calls the real layer: training and eval, running statistics, input checks
and backends all behave as in eager mode, and ``graph_module.eval()`` switches the layer as
it switches ``nn.BatchNorm2d``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.fx

__all__ = ["fx_leaf", "fx_leaf_call", "plain_ops_required"]


def plain_ops_required() -> bool:
    """Whether the current call is being captured op by op (compile, export, jit trace).

    Under these captures the shared op takes its plain-ops (reference) path.
    """
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def fx_leaf_call(module: torch.nn.Module, x: object) -> torch.fx.Proxy | None:
    """Record ``module(x)`` as a ``call_module`` node when ``x`` is an FX proxy, else ``None``.

    Args:
        module: the layer being called.
        x: its input; a :class:`torch.fx.Proxy` during ``torch.fx.symbolic_trace``.

    Raises:
        torch.fx.proxy.TraceError: when ``module`` is the root being traced (a leaf cannot
            be the root; trace a module that contains it).

    Returns:
        The proxy of the node's output during symbolic tracing, ``None`` otherwise (the
        caller then runs its normal forward).
    """
    if not isinstance(x, torch.fx.Proxy):
        return None
    tracer = x.tracer
    if not isinstance(tracer, torch.fx.Tracer):
        raise torch.fx.proxy.TraceError(
            f"{type(module).__name__} is recorded as a leaf module by torch.fx.Tracer, "
            f"got a proxy of {type(tracer).__name__}"
        )
    if module is getattr(tracer, "root", None):
        raise torch.fx.proxy.TraceError(
            f"torch.fx records {type(module).__name__} as a leaf module; trace a module that "
            "contains it, e.g. torch.nn.Sequential(layer)"
        )
    return tracer.create_proxy("call_module", tracer.path_of_module(module), (x,), {})


def fx_leaf(forward: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a module's ``forward`` so that symbolic tracing records the module as one
    ``call_module`` node (:func:`fx_leaf_call`) instead of running the method on proxies.

    :class:`~normlab.norms.NormBase` applies it to its own ``forward`` and to every
    subclass's override, so a layer is a leaf whatever its forward does first.

    ``torch.jit.script`` compiles the decorated ``forward``'s own source but looks its
    global names up in this module: a decorated forward should only call methods of
    ``self`` (as normlab's do).
    """

    @functools.wraps(forward)
    def traced_as_leaf(module: torch.nn.Module, x: Any, *args: Any, **kwargs: Any) -> Any:
        leaf = fx_leaf_call(module, x)
        return forward(module, x, *args, **kwargs) if leaf is None else leaf

    return traced_as_leaf
