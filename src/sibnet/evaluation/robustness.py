"""Robustness to input noise (the paper's Table 4).

:func:`add_gaussian_noise` adds zero-mean Gaussian noise of standard deviation ``sigma`` to images
whose intensities are scaled to [0, 1] (the dataset interface's convention, before any
normalisation), then clips to [0, 1]. The noise is drawn from a generator seeded with ``seed``
alone, so the same images, sigma and seed always give the same result (on CPU; for a tensor on
another device the noise is drawn on the CPU and moved). Evaluating batch by batch, pass a
different seed per batch (e.g. ``seed + batch_index``) to avoid repeating one noise pattern.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from sibnet.errors import DataError

__all__ = ["DEFAULT_SIGMAS", "add_gaussian_noise"]

DEFAULT_SIGMAS: tuple[float, ...] = (0.0, 0.005, 0.01, 0.05, 0.1)


def add_gaussian_noise(images, sigma: float, seed: int = 0):
    """``clip(images + N(0, sigma^2), 0, 1)``; same type, dtype and device as ``images``."""
    if (isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.number)) or not math.isfinite(sigma)
            or sigma < 0):
        raise DataError(f"argument 'sigma' must be a finite number >= 0, got {sigma!r}")
    is_tensor = isinstance(images, torch.Tensor)
    x = images if is_tensor else torch.as_tensor(np.asarray(images))
    if not x.is_floating_point():
        raise DataError(f"argument 'images' must be floating point scaled to [0, 1], got dtype {x.dtype}")
    if x.numel():
        lo, hi = float(x.min()), float(x.max())
        if not (0.0 <= lo and hi <= 1.0):
            raise DataError(
                f"argument 'images' must be scaled to [0, 1] before normalisation; found values in [{lo:g}, {hi:g}]"
            )
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    noise = torch.randn(x.shape, generator=gen, dtype=torch.float64) * float(sigma)
    out = (x.detach().to("cpu", torch.float64) + noise).clamp_(0.0, 1.0).to(device=x.device, dtype=x.dtype)
    return out if is_tensor else out.numpy()
