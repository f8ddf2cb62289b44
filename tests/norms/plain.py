"""Plain-formula normalizers for the tests, written straight from the papers' equations
on the full tensor (no per-(n, c) moments, no pooling rule, no shared core)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def moments(x, axes):
    """Biased mean and variance of x over ``axes``, kept as size-1 axes."""
    mu = x.mean(axes, keepdim=True)
    return mu, ((x - mu) ** 2).mean(axes, keepdim=True)


def spatial(x):
    return tuple(range(2, x.dim()))


def per_channel(t, x):
    return t.reshape((1, -1) + (1,) * (x.dim() - 2))


def per_sample_channel(t, x):
    return t.reshape(t.shape[:2] + (1,) * (x.dim() - 2))


def normalize(x, mu, var, eps):
    return (x - mu) / torch.sqrt(var + eps)


def instance_stats(x):
    return moments(x, spatial(x))


def layer_stats(x):
    return moments(x, (1, *spatial(x)))


def group_stats(x, groups):
    n, c = x.shape[:2]
    mu, var = moments(x.reshape(n, groups, -1), (2,))
    shape = (n, c) + (1,) * (x.dim() - 2)
    rep = c // groups
    return mu.repeat_interleave(rep, 1).reshape(shape), var.repeat_interleave(rep, 1).reshape(shape)


class BatchStats:
    """BN statistics of a batch plus the running-statistics update torch performs."""

    def __init__(self, running_mean, running_var, momentum=0.1, virtual=None, steps=0):
        self.running_mean = running_mean.clone()
        self.running_var = running_var.clone()
        self.momentum = momentum
        self.virtual = virtual
        self.steps = steps

    def __call__(self, x, training):
        if not training:
            return per_channel(self.running_mean, x), per_channel(self.running_var, x)
        size = x.shape[0] if self.virtual is None else self.virtual
        chunks = list(torch.split(x, size))
        stats = [moments(c, (0, *spatial(c))) for c in chunks]
        self.steps += 1
        factor = 1.0 / self.steps if self.momentum is None else self.momentum
        count = [c.numel() // c.shape[1] for c in chunks]
        new_mean = torch.stack([m.reshape(-1) for m, _ in stats]).mean(0)
        new_var = torch.stack(
            [v.reshape(-1) * n / (n - 1) for (_, v), n in zip(stats, count)]
        ).mean(0)
        self.running_mean = (1 - factor) * self.running_mean + factor * new_mean.detach()
        self.running_var = (1 - factor) * self.running_var + factor * new_var.detach()
        mu = torch.cat([m.expand(c.shape[0], *m.shape[1:]) for (m, _), c in zip(stats, chunks)])
        var = torch.cat([v.expand(c.shape[0], *v.shape[1:]) for (_, v), c in zip(stats, chunks)])
        return mu, var


def affine(x_hat, weight, bias, x, gamma_gate=None, beta_gate=None, noise=None):
    if noise is not None:
        x_hat = x_hat * noise[0] + noise[1]
    gamma = per_channel(weight, x)
    beta = per_channel(bias, x)
    if gamma_gate is not None:
        gamma = gamma * gamma_gate
    if beta_gate is not None:
        beta = beta * beta_gate
    return x_hat * gamma + beta


def iebn_gate(x, params, operator="linear", activation="sigmoid"):
    """delta[n, c] of IEBN Alg. 1 step 8, as an (N, C, 1...) tensor."""
    m = x.mean(spatial(x)) if x.dim() > 2 else x
    if operator == "linear":
        logit = params["gate_weight"] * m + params["gate_bias"]
    elif operator == "fc":
        hidden = F.relu(m @ params["gate_fc1_weight"].T + params["gate_fc1_bias"])
        logit = hidden @ params["gate_fc2_weight"].T + params["gate_fc2_bias"]
    else:
        logit = m
    act = {
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "relu": F.relu,
        "softmax": lambda t: torch.softmax(t, 1),
    }[activation]
    return per_sample_channel(act(logit), x)


def switch_stats(x, params, normalizers, batch, training):
    """SN Eqn. 3-5: softmax-weighted IN/LN/BN(/GN) means and variances."""
    parts = []
    for name in normalizers:
        if name == "in":
            parts.append(instance_stats(x))
        elif name == "ln":
            parts.append(layer_stats(x))
        elif name == "bn":
            parts.append(batch(x, training))
        else:
            parts.append(group_stats(x, params["num_groups"]))
    wm = torch.softmax(params["mean_weight"], 0)
    wv = torch.softmax(params["var_weight"], 0)
    mu = sum(w * m for w, (m, _) in zip(wm, parts))
    var = sum(w * v for w, (_, v) in zip(wv, parts))
    return mu, var
