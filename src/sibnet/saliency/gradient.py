"""Gradient-based maps: input x gradient, for all K classes in one batched backward pass."""

from __future__ import annotations

import torch
from torch import nn

from .batched import batched_vjp, start_relevance


def input_x_gradient_forward(model: nn.Module, x: torch.Tensor, *, targets=None, create_graph: bool = False,
                             loop: bool = False):
    """``(logits, maps)`` with ``map_c = sum_channels x * d logit_c / dx``."""
    leaf = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(leaf)
        seeds = start_relevance(logits, targets)
        grads = batched_vjp(logits, leaf, seeds, create_graph=create_graph, loop=loop)
    maps = (grads * leaf.unsqueeze(0)).sum(dim=2).transpose(0, 1)
    return logits, maps
