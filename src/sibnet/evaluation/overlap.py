"""Overlap and distance between binary masks: Dice, HD95 (MONAI convention), set Hausdorff.

Conventions
-----------
* Masks are 2-D (or N-D) arrays; any nonzero value is foreground.
* :func:`dice`: ``2|A∩B| / (|A| + |B|)``; ``nan`` when both masks are empty (undefined).
* :func:`hd95` follows MONAI's ``compute_hausdorff_distance(percentile=95)``: the boundaries
  (edges) of both masks are the foreground pixels removed by one binary erosion with the
  4-connected cross (image border counts as background); for each boundary pixel of A the
  Euclidean distance to the nearest boundary pixel of B, and vice versa; the 95th percentile
  (linear interpolation) is taken in each direction separately and the larger of the two is
  returned. Distances are between pixel centres, in pixels, or in physical units (e.g. mm) when
  ``spacing`` (one number, or one per axis) is given. Both masks empty: ``nan`` (undefined, as
  MONAI); exactly one empty: ``inf`` (as MONAI's maximum Hausdorff distance; MONAI's
  ``percentile=95`` path returns ``nan`` there, an artefact of ``torch.quantile`` on infinite
  distances, which is not copied).
* :func:`hausdorff`: the classical (maximum) symmetric Hausdorff distance between the two
  foreground pixel SETS (not their boundaries), as in the GlaS challenge's evaluation code.
  Both empty: 0; one empty: ``inf`` (the GlaS convention).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import binary_erosion, distance_transform_edt

from sibnet.errors import DataError

__all__ = ["as_float", "as_mask", "boundary", "dice", "hausdorff", "hd95"]


def as_float(x, name: str) -> np.ndarray:
    """A float64 numpy array from a numpy array or tensor; nan or inf is a DataError naming ``name``."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if not np.isfinite(x).all():
        raise DataError(f"argument {name!r} contains nan or inf")
    return x


def as_mask(x, name: str = "mask") -> np.ndarray:
    """A boolean numpy array from a numpy array or tensor (nonzero = foreground)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype != bool:
        if x.dtype.kind == "f" and np.isnan(x).any():
            raise DataError(f"argument {name!r} contains nan")
        x = x != 0
    return x


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = as_mask(a, "a"), as_mask(b, "b")
    if a.shape != b.shape:
        raise DataError(f"arguments 'a' {a.shape} and 'b' {b.shape} must have the same shape")
    return a, b


def _sampling(spacing, ndim: int):
    if spacing is None:
        return None
    s = np.atleast_1d(np.asarray(spacing, dtype=float))
    if s.size == 1:
        s = np.repeat(s, ndim)
    if s.size != ndim or not np.all(s > 0):
        raise DataError(f"argument 'spacing' must be one positive number or {ndim} of them, got {spacing!r}")
    return tuple(s)


def dice(a, b) -> float:
    """Dice coefficient of two masks; ``nan`` when both are empty."""
    a, b = _pair(a, b)
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return math.nan
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def boundary(m) -> np.ndarray:
    """Boundary pixels: foreground minus its erosion by the 4-connected cross (MONAI's edges)."""
    m = as_mask(m)
    return m & ~binary_erosion(m)


def _crop(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cropped to the bounding box of their union plus one pixel (inside the image).

    Distances between the two sets and their boundaries are unchanged by this crop.
    """
    idx = np.argwhere(a | b)
    lo = np.maximum(idx.min(0) - 1, 0)
    hi = idx.max(0) + 2
    sl = tuple(slice(int(low), int(high)) for low, high in zip(lo, hi))
    return a[sl], b[sl]


def _distances_to(target: np.ndarray, sampling) -> np.ndarray:
    """Euclidean distance of every pixel to the nearest ``target`` pixel (exact EDT)."""
    return distance_transform_edt(~target, sampling=sampling)


def hd95(a, b, spacing=None, percentile: float = 95.0) -> float:
    """95th-percentile symmetric Hausdorff distance between the boundaries of two masks.

    See the module docstring for the convention (MONAI's). ``percentile=100`` gives the
    boundary Hausdorff distance.
    """
    a, b = _pair(a, b)
    if not 0 <= percentile <= 100:
        raise DataError(f"argument 'percentile' must be in [0, 100], got {percentile!r}")
    if not a.any() and not b.any():
        return math.nan
    if not a.any() or not b.any():
        return math.inf
    s = _sampling(spacing, a.ndim)
    a, b = _crop(a, b)
    ea, eb = boundary(a), boundary(b)
    d_ab = _distances_to(eb, s)[ea]
    d_ba = _distances_to(ea, s)[eb]
    return float(max(np.percentile(d_ab, percentile), np.percentile(d_ba, percentile)))


def hausdorff(a, b, spacing=None) -> float:
    """Symmetric (maximum) Hausdorff distance between the foreground sets of two masks."""
    a, b = _pair(a, b)
    if not a.any() and not b.any():
        return 0.0
    if not a.any() or not b.any():
        return math.inf
    s = _sampling(spacing, a.ndim)
    a, b = _crop(a, b)
    return float(max(_distances_to(b, s)[a].max(), _distances_to(a, s)[b].max()))
