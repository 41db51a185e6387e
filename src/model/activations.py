"""Activation registry: the sigma of w(d)_j = max_i sigma(l[i, j]) * attn[i].

Every activation here must be monotone non-decreasing with sigma(x) = 0 for x <= 0, so the
max over tokens can be taken on the logits before sigma (the encoder relies on it).
Add one with ``@register("name")``; tests/test_activations.py checks every registered name.
"""

from collections.abc import Callable

import torch

Activation = Callable[[torch.Tensor], torch.Tensor]

ACTIVATIONS: dict[str, Activation] = {}
MAX_LOG_APPLICATIONS = 4
# How many log1p follow the relu in the relu/logN family, for formats that rebuild the activation from those two
# steps (sentence-transformers' SpladePooling); a registered activation absent here has no such form.
LOG1P_COUNTS: dict[str, int] = {"relu": 0}


def register(name: str) -> Callable[[Activation], Activation]:
    def add(fn: Activation) -> Activation:
        if name in ACTIVATIONS:
            raise ValueError(f"activation {name!r} is registered twice")
        ACTIVATIONS[name] = fn
        return fn

    return add


def _log_n(n: int) -> Activation:
    """relu followed by log1p applied n times; log2 is the paper's l0 approximation."""

    def activation(x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(x)
        for _ in range(n):
            x = torch.log1p(x)
        return x

    activation.__name__ = f"log{n}"
    return activation


register("relu")(torch.relu)
for _n in range(1, MAX_LOG_APPLICATIONS + 1):
    register(f"log{_n}")(_log_n(_n))
    LOG1P_COUNTS[f"log{_n}"] = _n


def get_activation(name: str) -> Activation:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        known = ", ".join(sorted(ACTIVATIONS))
        raise ValueError(f"activation={name!r} is not a known activation; known: {known}") from None
