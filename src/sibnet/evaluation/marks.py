"""How much of a saliency map falls on burned-in marks (text, calipers, "+" crosses) of an image.

Ultrasound images such as BUSI's carry annotations burned into the pixels: text ("RT AXILLA",
"LT10:00"), caliper crosses and dotted measuring lines. They are bright and thin, and they appear
more often on some classes than on others, so a classifier can use them instead of the lesion.

Marks region (:func:`marks_region`)
-----------------------------------
The image (channels averaged) is scaled to [0, 1] by its own minimum and maximum, so any affine
intensity normalisation gives the same region. A pixel is in the region when the white top-hat of
the scaled image (scikit-image ``white_tophat`` with a square footprint of side ``2 * footprint + 1``:
the image minus its grey-level opening) exceeds ``threshold``, i.e. it is at least ``threshold``
brighter than what remains after removing every bright structure into which the square does not
fit (with ``footprint=1``, lines and strokes up to 2 pixels wide, the crossing of a "+" included).
``dilate`` widens the region by that many pixels (``disk``).
Besides the marks, the region holds thin bright echoes of the tissue itself; on BUSI at 128 px
with the defaults the region covers about 0.8 % of an image on average (at most about 3 %) and
about 0.6 % of a lesion mask (every third image of the shared copy).

Share (:func:`marks_share`)
---------------------------
``share[i, k]`` = (positive part of map ``k`` of image ``i`` summed over the region) / (its sum over
the whole image); ``nan`` where the map has no positive mass. ``area[i]`` is the region's fraction
of image ``i``: the share that a map spread uniformly over the image would have.

Reading: a share near 0 means the map ignores the marks; a share close to ``area`` means the map
neither seeks nor avoids them; ``enrichment = share / area`` well above 1 means the map
concentrates on them, and a share near 1 that the map lies on them almost entirely. Compare models
on the same images and size; the absolute value depends on how many marks the images carry.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_dilation
from skimage.morphology import disk, white_tophat

from ..errors import DataError
from .overlap import as_float

__all__ = ["FOOTPRINT", "THRESHOLD", "marks_region", "marks_share"]
FOOTPRINT = 1
THRESHOLD = 0.25


def _check(footprint, threshold, dilate) -> None:
    if isinstance(footprint, bool) or not isinstance(footprint, (int, np.integer)) or footprint < 1:
        raise DataError(f"argument 'footprint' must be an integer >= 1, got {footprint!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.number)) or not 0 < threshold < 1:
        raise DataError(f"argument 'threshold' must be a number in (0, 1), got {threshold!r}")
    if isinstance(dilate, bool) or not isinstance(dilate, (int, np.integer)) or dilate < 0:
        raise DataError(f"argument 'dilate' must be an integer >= 0, got {dilate!r}")


def marks_region(image, footprint: int = FOOTPRINT, threshold: float = THRESHOLD, dilate: int = 0) -> np.ndarray:
    """Boolean (H, W): the bright thin structures of ``image`` ((H, W) or (C, H, W)); see the module doc."""
    _check(footprint, threshold, dilate)
    x = as_float(image, "image")
    if x.ndim == 3:
        x = x.mean(0)
    if x.ndim != 2:
        raise DataError(f"argument 'image' must be (H, W) or (C, H, W), got shape {tuple(x.shape)}")
    lo, hi = x.min(), x.max()
    if hi <= lo:
        return np.zeros(x.shape, dtype=bool)
    x = (x - lo) / (hi - lo)
    side = 2 * int(footprint) + 1
    region = white_tophat(x, np.ones((side, side), dtype=bool)) > threshold
    if dilate:
        region = binary_dilation(region, structure=disk(int(dilate)).astype(bool))
    return region


def mass_share(maps: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Share of each map's positive mass inside ``region`` (boolean, broadcast against ``maps`` (..., H, W));
    NaN where a map has no positive mass."""
    pos = np.clip(np.asarray(maps, dtype=np.float64), 0, None)
    total = pos.sum(axis=(-2, -1))
    on = (pos * np.asarray(region, dtype=bool)).sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, on / np.where(total > 0, total, 1), np.nan)


def marks_share(maps, images, labels=None, *, footprint: int = FOOTPRINT, threshold: float = THRESHOLD,
                dilate: int = 0) -> dict:
    """Share of each map's positive mass on the marks region of its image.

    ``maps`` (N, K, H, W), ``images`` (N, C, H, W) of the same size (normalised or not). With
    ``labels`` (N, K) the summary covers the maps of classes with label 1, else every map. Returns::

        {"share": (N, K) array (nan: no positive mass), "area": (N,) region fraction,
         "mean", "sd", "n": summary of the shares, "area_mean": mean area of the images
         summarised, "enrichment": mean / area_mean}
    """
    m = as_float(maps, "maps")
    x = as_float(images, "images")
    if m.ndim != 4:
        raise DataError(f"argument 'maps' must have shape (N, K, H, W), got {tuple(m.shape)}")
    if x.ndim != 4 or x.shape[0] != m.shape[0] or x.shape[2:] != m.shape[2:]:
        raise DataError(f"argument 'images' must have shape (N, C, {m.shape[2]}, {m.shape[3]}) with N = "
                        f"{m.shape[0]}, got {tuple(x.shape)}")
    if labels is not None:
        y = np.asarray(labels.detach().cpu().numpy() if hasattr(labels, "detach") else labels, dtype=np.float64)
        if y.shape != m.shape[:2]:
            raise DataError(f"argument 'labels' has shape {tuple(y.shape)}, expected {tuple(m.shape[:2])}")
        use = y == 1
    else:
        use = np.ones(m.shape[:2], dtype=bool)
    regions = np.stack([marks_region(img, footprint, threshold, dilate) for img in x])
    share = mass_share(m, regions[:, None])
    area = regions.mean(axis=(1, 2))
    chosen = share[use & np.isfinite(share)]
    rows = np.flatnonzero((use & np.isfinite(share)).any(1))
    mean = float(chosen.mean()) if chosen.size else None
    area_mean = float(area[rows].mean()) if rows.size else None
    return {"share": share, "area": area, "mean": mean,
            "sd": float(chosen.std(ddof=1)) if chosen.size > 1 else None, "n": int(chosen.size),
            "area_mean": area_mean,
            "enrichment": (mean / area_mean) if mean is not None and area_mean else None}
