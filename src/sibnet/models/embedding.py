"""The penultimate representation of a classifier: the features that feed its last linear layer."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import SibnetError


class _LastLinearInput(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.features = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            self.features = args[0] if args else kwargs["input"]
        return func(*args, **kwargs)


def penultimate(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, D) input of the last ``F.linear`` call of ``model(x)`` (e.g. DenseNet's pooled features)."""
    return logits_and_penultimate(model, x)[1]


def logits_and_penultimate(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(model(x), penultimate features (N, D))`` from one forward pass."""
    watcher = _LastLinearInput()
    with watcher:
        logits = model(x)
    if watcher.features is None:
        raise SibnetError(f"{type(model).__name__} has no linear layer whose input could serve as the "
                          "penultimate representation")
    return logits, watcher.features.flatten(1)


@contextlib.contextmanager
def frozen_parameters(model: nn.Module):
    """Parameters do not record gradients inside the block (their flags are restored on exit)."""
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p in params:
            p.requires_grad_(True)
