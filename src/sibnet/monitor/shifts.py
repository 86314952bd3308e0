"""Shifted copies of a dataset, to measure how well a monitor score detects what a model should not be trusted on.

A shift is written ``KIND:VALUE``:

``noise:S``       Gaussian noise of sd S on the [0, 1] image, clipped
                  (:func:`sibnet.evaluation.robustness.add_gaussian_noise`)
``blur:S``        Gaussian blur of sd S pixels over the spatial axes (``scipy.ndimage.gaussian_filter``,
                  reflected border, truncated at 4 sd)
``contrast:F``    contrast scaled by F around the image's mean intensity: ``mean + F (x - mean)``, clipped to [0, 1]
``gamma:G``       intensities raised to the power G

These act on the images of a clean dataset (same images, same labels), seeded per image
(``seed * 100003 + index``) so every model sees the same shifted images. The dataset's images
must be the [0, 1] intensities (a dataset that normalises its images is refused).
Shifts that need another dataset (the synthetic generator with other options, another dataset
entirely) are built by the caller (see :mod:`sibnet.monitor.study`).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from ..errors import ConfigError
from ..evaluation.robustness import add_gaussian_noise

IMAGE_SHIFTS = ("noise", "blur", "contrast", "gamma")


def parse_shift(text: str) -> tuple[str, str]:
    """The ``(kind, value)`` strings of a ``KIND:VALUE`` shift; ConfigError if either is missing."""
    kind, sep, value = str(text).partition(":")
    if not sep or not kind or not value:
        raise ConfigError(f"shift {text!r}: expected KIND:VALUE, e.g. noise:0.05")
    return kind, value


def shift_images(x: torch.Tensor, kind: str, value: float, seed: int = 0) -> torch.Tensor:
    """The (C, H, W) or (B, C, H, W) [0, 1] images ``x`` under the shift ``kind`` of strength ``value``."""
    from scipy.ndimage import gaussian_filter

    if kind == "noise":
        return add_gaussian_noise(x, float(value), seed=seed)
    if kind == "blur":
        if value <= 0:
            raise ConfigError(f"blur: sd must be > 0, got {value}")
        sd = [0.0] * (x.ndim - 2) + [float(value)] * 2
        out = gaussian_filter(x.detach().cpu().double().numpy(), sigma=sd, mode="reflect")
        return torch.from_numpy(out).to(dtype=x.dtype, device=x.device).clamp(0, 1)
    if kind == "contrast":
        if value < 0:
            raise ConfigError(f"contrast: factor must be >= 0, got {value}")
        mean = x.mean(dim=(-3, -2, -1), keepdim=True)
        return (mean + float(value) * (x - mean)).clamp(0, 1)
    if kind == "gamma":
        if value <= 0:
            raise ConfigError(f"gamma: must be > 0, got {value}")
        return x.clamp(0, 1) ** float(value)
    raise ConfigError(f"unknown image shift {kind!r}; choose from {', '.join(IMAGE_SHIFTS)}")


class ShiftedDataset(Dataset):
    """``dataset`` with ``shift_images(item["image"], kind, value, seed=seed * 100003 + index)``."""

    def __init__(self, dataset, kind: str, value: float, seed: int = 0):
        if kind not in IMAGE_SHIFTS:
            raise ConfigError(f"unknown image shift {kind!r}; choose from {', '.join(IMAGE_SHIFTS)}")
        if getattr(dataset, "normalize", None) not in (None, False):
            raise ConfigError("shifts are defined on [0, 1] images; the dataset normalises its images")
        self.dataset, self.kind, self.value, self.seed = dataset, kind, float(value), int(seed)
        self.info = getattr(dataset, "info", None)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        item = dict(self.dataset[i])
        item["image"] = shift_images(item["image"], self.kind, self.value, seed=self.seed * 100003 + int(i))
        return item


__all__ = ["IMAGE_SHIFTS", "ShiftedDataset", "parse_shift", "shift_images"]
