"""Saliency-map normalisation applied before the SIBNet loss terms (docs/design.md, Losses: 'Normalisation').

Each (image, class) map is passed through a ReLU and divided by its own maximum plus ``eps``, so
every map lies in [0, 1) and the losses cannot be lowered by merely shrinking the maps.
"""

from __future__ import annotations

import torch

from sibnet.errors import ConfigError


def check_maps(maps: torch.Tensor, name: str = "maps") -> None:
    """Raise :class:`ConfigError` unless ``maps`` is a floating (B, K, H, W) tensor."""
    if not isinstance(maps, torch.Tensor):
        raise ConfigError(f"{name}: expected a torch.Tensor of shape (B, K, H, W), got {type(maps).__name__}")
    if maps.ndim != 4:
        raise ConfigError(f"{name}: expected shape (B, K, H, W), got {tuple(maps.shape)}")
    if not maps.is_floating_point():
        raise ConfigError(f"{name}: expected a floating-point tensor, got {maps.dtype}")


def normalise_maps(maps: torch.Tensor, eps: float = 1e-8, *, checked: bool = False) -> torch.Tensor:
    """``relu(S) / (max_{h,w} relu(S) + eps)`` for every (image, class) map of a (B, K, H, W) batch.

    Differentiable (the gradient of the maximum goes to the arg-max pixel; ties share it as in
    ``torch.amax``). An all-zero or all-negative map becomes all zeros (no division by zero).
    ``checked``: the caller has checked ``maps`` already (:func:`check_maps` is skipped).
    """
    if not checked:
        check_maps(maps)
    if not eps > 0:
        raise ConfigError(f"eps: must be positive, got {eps!r}")
    positive = torch.relu(maps)
    peak = positive.amax(dim=(-2, -1), keepdim=True)
    return positive / (peak + eps)
