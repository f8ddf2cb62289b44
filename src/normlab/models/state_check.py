"""How a state dict read from a file differs from the one a network expects."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

__all__ = ["StateMismatch", "state_mismatch"]


@dataclass(frozen=True)
class StateMismatch:
    """Keys the file lacks, keys the network lacks, and ``(key, file shape, expected shape)``
    of the keys both hold with different shapes; each sorted by key."""

    missing: list[str]
    unexpected: list[str]
    wrong_shapes: list[tuple[str, tuple[int, ...], tuple[int, ...]]]

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.wrong_shapes)


def state_mismatch(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size]
) -> StateMismatch:
    """Compare the tensors of ``state`` with the shapes ``expected`` (a network's
    ``{key: tensor.shape}``); an empty (false) result means the file fits."""
    return StateMismatch(
        missing=sorted(set(expected) - set(state)),
        unexpected=sorted(set(state) - set(expected)),
        wrong_shapes=sorted(
            (key, tuple(state[key].shape), tuple(expected[key]))
            for key in set(state) & set(expected)
            if state[key].shape != expected[key]
        ),
    )
