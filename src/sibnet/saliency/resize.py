"""Linear resizing of maps (and images) with one, two or three spatial dimensions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: the ``F.interpolate`` mode of linear interpolation by the number of spatial dimensions
LINEAR_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def resize_linear(x: torch.Tensor, size) -> torch.Tensor:
    """``x`` (B, C, *spatial) resized to ``size`` by linear, bilinear or trilinear interpolation
    (half-pixel centres: ``align_corners=False``, no antialiasing)."""
    return F.interpolate(x, size=size, mode=LINEAR_MODES[x.dim() - 2], align_corners=False)
