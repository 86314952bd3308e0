"""Agreement of saliency maps with expert masks (the paper's Table 3; the reading is written out below).

Each map is binarised by the convex hull of its above-threshold pixels, then compared with the
expert mask by Dice, HD95 and SSIM.

Convex-hull binarisation (:func:`binarise_convex_hull`)
------------------------------------------------------
* Foreground pixels: ``map > t`` with ``t`` = Otsu's threshold (scikit-image ``threshold_otsu``,
  256 bins), the map's mean, or a given number. A constant map has no pixel above its Otsu or
  mean threshold.
* The hull is the convex hull (``scipy.spatial.ConvexHull``) of the foreground pixel CENTRES,
  taken as a closed set: a pixel is in the binarised map when its centre lies inside the hull or
  on its boundary (so every above-threshold pixel is kept). This equals scikit-image's
  ``convex_hull_image(offset_coordinates=False)`` on non-degenerate input.
* Degenerate cases, where Qhull has no 2-D hull, are handled explicitly with the same closed-set
  rule: no foreground pixel gives an empty mask; one pixel gives that pixel; two pixels, or any
  number of collinear pixels, give the pixels whose centres lie exactly on the segment between the
  two extreme points (for adjacent or contiguous pixels: the points themselves).

Metrics (:func:`dice`, :func:`hd95` from :mod:`sibnet.evaluation.overlap`, and :func:`ssim`)
-----------------------------------------------------------------------------------------
``ssim`` is scikit-image's ``structural_similarity`` on the two binary masks as floats with
``data_range=1`` (default 7x7 uniform window; both sides must be at least 7 pixels).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy.spatial import ConvexHull
from skimage.filters import threshold_otsu
from skimage.metrics import structural_similarity

from sibnet.errors import DataError
from sibnet.evaluation.overlap import as_float, as_mask, dice, hd95

__all__ = ["binarise_convex_hull", "dice", "hd95", "ssim", "saliency_agreement", "hull_of_points"]


def _threshold(s: np.ndarray, threshold) -> float:
    if isinstance(threshold, str):
        if threshold == "otsu":
            return float(s.min()) if s.min() == s.max() else float(threshold_otsu(s, nbins=256))
        if threshold == "mean":
            return float(s.mean())
        raise DataError(f"argument 'threshold' must be 'otsu', 'mean' or a number, got {threshold!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.number)):
        raise DataError(f"argument 'threshold' must be 'otsu', 'mean' or a number, got {threshold!r}")
    return float(threshold)


def hull_of_points(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Boolean (H, W) mask of the pixels whose centres lie in the closed convex hull of ``points``.

    ``points`` are integer (row, col) pixel coordinates. Degenerate sets (0, 1 point, collinear)
    are handled as described in the module docstring.
    """
    out = np.zeros(shape, dtype=bool)
    pts = np.unique(np.asarray(points, dtype=np.int64).reshape(-1, 2), axis=0)
    if len(pts) == 0:
        return out
    rel = pts - pts[0]
    far = np.flatnonzero(np.any(rel != 0, axis=1))
    if far.size == 0:  # a single point
        out[pts[0, 0], pts[0, 1]] = True
        return out
    d = rel[far[0]]
    cross = rel[:, 0] * d[1] - rel[:, 1] * d[0]  # exact in integers
    if not cross.any():  # collinear: the lattice points on the segment between the extremes
        t = rel @ d
        pa, pb = pts[np.argmin(t)], pts[np.argmax(t)]
        delta = pb - pa
        g = math.gcd(int(abs(delta[0])), int(abs(delta[1])))
        seg = pa + np.arange(g + 1)[:, None] * (delta // g)
        out[seg[:, 0], seg[:, 1]] = True
        return out
    hull = ConvexHull(pts.astype(np.float64))
    lo, hi = pts.min(0), pts.max(0)
    rr, cc = np.mgrid[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1]
    grid = np.stack([rr.ravel(), cc.ravel()], axis=1).astype(np.float64)
    # hull.equations: unit outward normals n and offsets o with n.x + o <= 0 inside
    inside = np.all(grid @ hull.equations[:, :2].T + hull.equations[:, 2] <= 1e-7, axis=1)
    out[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1] = inside.reshape(rr.shape)
    return out


def binarise_convex_hull(saliency, threshold="otsu") -> np.ndarray:
    """Binarise a saliency map (H, W) by the convex hull of its pixels above ``threshold``."""
    s = as_float(saliency, "saliency")
    if s.ndim != 2:
        raise DataError(f"argument 'saliency' must be one (H, W) map, got shape {tuple(s.shape)}")
    t = _threshold(s, threshold)
    return hull_of_points(np.argwhere(s > t), s.shape)


def ssim(a, b) -> float:
    """SSIM of two binary masks (scikit-image, ``data_range=1``, 7x7 window)."""
    a, b = as_mask(a, "a"), as_mask(b, "b")
    if a.shape != b.shape:
        raise DataError(f"arguments 'a' {a.shape} and 'b' {b.shape} must have the same shape")
    if min(a.shape) < 7:
        raise DataError(f"SSIM needs images of at least 7x7 pixels, got {a.shape}")
    return float(structural_similarity(a.astype(np.float64), b.astype(np.float64), data_range=1.0))


def _summary(values: list[float]) -> dict:
    v = np.asarray(values, dtype=float)
    finite = v[np.isfinite(v)]
    return {
        "mean": float(finite.mean()) if finite.size else None,
        "sd": float(finite.std(ddof=1)) if finite.size > 1 else None,
        "n": int(finite.size),
    }


def _check_inputs(maps, masks, labels, class_names) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Check and convert the arguments of :func:`saliency_agreement`.

    Returns:
        The maps as floats, the masks as booleans, the labels (all as numpy arrays) and the K class names
        (``class_0``, ``class_1``, ... when none are given).

    Raises:
        DataError: When the shapes do not match (N, K, H, W) and (N, K) or there are not K names.
    """
    m = as_float(maps, "maps")
    g = as_mask(masks, "masks")
    y = labels.detach().cpu().numpy() if hasattr(labels, "detach") else np.asarray(labels, dtype=float)
    if m.ndim != 4:
        raise DataError(f"argument 'maps' must have shape (N, K, H, W), got {tuple(m.shape)}")
    if g.shape != m.shape:
        raise DataError(f"argument 'masks' has shape {tuple(g.shape)} but 'maps' has {tuple(m.shape)}")
    if y.shape != m.shape[:2]:
        raise DataError(f"argument 'labels' has shape {tuple(y.shape)}, expected {tuple(m.shape[:2])}")
    k = m.shape[1]
    names = [str(c) for c in class_names] if class_names is not None else [f"class_{j}" for j in range(k)]
    if len(names) != k:
        raise DataError(f"argument 'class_names' has {len(names)} names but the maps have {k} classes")
    return m, g, y, names


def _pair_records(m: np.ndarray, g: np.ndarray, y: np.ndarray, names: list[str], threshold, spacing) -> list[dict]:
    """One record per scored pair (image, class): label 1 and a nonempty mask, in image then class order."""
    n, k = m.shape[:2]
    records = []
    for i in range(n):
        for j in range(k):
            if y[i, j] != 1 or not g[i, j].any():
                continue
            hull = binarise_convex_hull(m[i, j], threshold)
            records.append(
                {
                    "index": i,
                    "class": names[j],
                    "dice": dice(hull, g[i, j]),
                    "hd95": hd95(hull, g[i, j], spacing=spacing),
                    "ssim": ssim(hull, g[i, j]),
                    "empty_map": not hull.any(),
                }
            )
    return records


def _class_entry(records: list[dict]) -> dict:
    """Summary of one class's records: each metric's mean, sd and n, the number of pairs and of empty maps."""
    return {
        "dice": _summary([r["dice"] for r in records]),
        "hd95": _summary([r["hd95"] for r in records]),
        "ssim": _summary([r["ssim"] for r in records]),
        "n_pairs": len(records),
        "n_empty_maps": sum(r["empty_map"] for r in records),
    }


def _macro_mean(per_class: dict) -> dict:
    """Unweighted mean of the per-class means of each metric over the classes with any pair."""
    scored = [c for c in per_class.values() if c["n_pairs"]]

    def macro(metric: str):
        vals = [c[metric]["mean"] for c in scored if c[metric]["mean"] is not None]
        return float(np.mean(vals)) if vals else None

    return {"dice": macro("dice"), "hd95": macro("hd95"), "ssim": macro("ssim"), "n_classes": len(scored)}


def saliency_agreement(
    maps,
    masks,
    labels,
    class_names: Sequence[str] | None = None,
    threshold="otsu",
    spacing=None,
) -> dict:
    """Dice, HD95 and SSIM between convex-hull-binarised maps and expert masks.

    ``maps`` and ``masks`` are (N, K, H, W), ``labels`` (N, K). A pair (image, class) is scored
    only when the class is present (label 1) and its mask is nonempty. Returns::

        {"per_class": {name: {"dice": {"mean", "sd", "n"}, "hd95": {...}, "ssim": {...},
                              "n_pairs", "n_empty_maps"}},
         "mean": {"dice", "hd95", "ssim", "n_classes"},
         "records": [{"index", "class", "dice", "hd95", "ssim", "empty_map"}]}

    An empty binarised map scores Dice 0 and is counted in ``n_empty_maps``; its HD95 (``inf``)
    is kept in ``records`` but left out of the HD95 summary, whose ``n`` says how many pairs it
    covers. ``mean`` is the unweighted mean of the per-class means over classes with any pair.
    HD95 is in pixels, or in the unit of ``spacing`` when given.
    """
    m, g, y, names = _check_inputs(maps, masks, labels, class_names)
    records = _pair_records(m, g, y, names, threshold, spacing)
    per_class = {name: _class_entry([r for r in records if r["class"] == name]) for name in names}
    return {"per_class": per_class, "mean": _macro_mean(per_class), "records": records}
