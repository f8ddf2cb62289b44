"""Layers shared by the higher-order and torch.func tests."""

import inspect

import torch

from normlab.norms import norm_info, resolve_norm

C = 4


def track_options(name, dim=2):
    """The ``track_running_stats`` values the layer takes (``[None]``: it has no such flag)."""
    if "track_running_stats" in inspect.signature(resolve_norm(name, dim)).parameters:
        return [True, False]
    return [None]


def make_layer(name, dim=2, backend=None, training=True, track=True):
    """A float64 layer of C channels, with running statistics as ``track`` says where it
    takes the flag, and parameters and buffers moved away from their initial values (so
    that no term of a derivative vanishes). In training, a norm whose backward treats part
    of its forward as constant is built where that part is constant (its registered
    ``gradcheck_kwargs``), so that numerical derivatives check its gradients."""
    kwargs = {"backend": backend, **(norm_info(name).gradcheck_kwargs if training else {})}
    if track is not None and track_options(name, dim) != [None]:
        kwargs["track_running_stats"] = track
    layer = resolve_norm(name, dim)(C, **kwargs).double().train(training)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
        if getattr(layer, "running_var", None) is not None:
            layer.running_mean.normal_()
            layer.running_var.uniform_(0.5, 1.5)
    return layer


def keeps_running_stats(layer):
    return getattr(layer, "num_batches_tracked", None) is not None
