"""The GlaS challenge evaluation (Sirinukunwattana et al., Medical Image Analysis 35, 2017).

Inputs are instance label maps (H, W) of integers: 0 background, each gland one positive label
(labels need not be consecutive). A binary prediction must first be split into instances, e.g.
with :func:`label_instances` (connected components).

Definitions (as in the paper and the challenge's evaluation code)
-----------------------------------------------------------------
* Matching: the ground-truth object of a segmented object S_j is the GT object with the largest
  overlap with S_j (background not counted; ties go to the smallest label, as MATLAB's ``mode``).
  Symmetrically for a GT object G_i.
* Object F1: S_j is a true positive when its matched GT object G has |S_j ∩ G| / |G| > 0.5,
  otherwise a false positive; FN = (number of GT objects) − TP. Since two disjoint segmented
  objects cannot both cover more than half of one GT object, each GT object is matched at most
  once. F1 = 2TP / (2TP + FP + FN); both images empty: 1.
* Object Dice: 1/2 [ Σ_i γ_i D(G_i, S*(G_i)) + Σ_j σ_j D(G*(S_j), S_j) ] with γ_i = |G_i| / Σ|G|,
  σ_j = |S_j| / Σ|S|; an object without any overlap is compared with the empty set (Dice 0).
  Both images empty: 1; exactly one empty: 0.
* Object Hausdorff: the same weighting with H = the classical symmetric Hausdorff distance between
  the two objects' pixel sets (:func:`sibnet.evaluation.overlap.hausdorff`); an object without
  overlap is compared with the object of the other image nearest to it in Hausdorff distance.
  Both empty: 0; exactly one empty: ``inf``.
* Pixel level: Dice and HD95 (:mod:`sibnet.evaluation.overlap`, MONAI convention) of the
  foregrounds (label > 0).

Dataset level (:func:`glas_dataset_scores`): F1 from TP, FP, FN summed over images; object Dice
and Hausdorff with the weights γ, σ normalised over ALL objects of ALL images (the challenge's
aggregation), so large glands weigh more wherever they are; pixel Dice and HD95 are means over
images. A GT object in an image with no segmented object (or vice versa) contributes Dice 0 and
Hausdorff ``inf`` there, so one such image makes the dataset object Hausdorff ``inf``; the
per-image means are reported beside it. Distances are in pixels, or in the unit of ``spacing``.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
from skimage.measure import label as _cc_label

from sibnet.errors import DataError
from sibnet.evaluation.overlap import dice, hausdorff, hd95

__all__ = ["glas_scores", "glas_dataset_scores", "label_instances"]


def label_instances(mask, connectivity: int = 2) -> np.ndarray:
    """Instance map from a binary mask: connected components (8-connected by default)."""
    m = mask.detach().cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask)
    return _cc_label(m != 0, connectivity=connectivity).astype(np.int64)


def _instances(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != 2:
        raise DataError(f"argument {name!r} must be an (H, W) instance label map, got shape {x.shape}")
    if x.dtype.kind == "f":
        if not np.isfinite(x).all() or (x != np.round(x)).any():
            raise DataError(f"argument {name!r} must hold integer instance labels")
    elif x.dtype.kind not in "iub":
        raise DataError(f"argument {name!r} must hold integer instance labels, got dtype {x.dtype}")
    x = x.astype(np.int64)
    if (x < 0).any():
        raise DataError(f"argument {name!r} has negative labels; 0 is background, glands are 1, 2, ...")
    return x


def _best_match(overlap_row: np.ndarray) -> int:
    """Index of the largest overlap (smallest index on ties), or -1 when there is none."""
    return int(np.argmax(overlap_row)) if overlap_row.max(initial=0) > 0 else -1


def _side(src, src_ids, src_area, dst, dst_ids, overlap, spacing):
    """Per-object (area, dice, hausdorff) of every object of ``src`` against its match in ``dst``."""
    rows = []
    for a, sid in enumerate(src_ids):
        obj = src == sid
        m = _best_match(overlap[a])
        if m >= 0:
            other = dst == dst_ids[m]
            d, h = dice(obj, other), hausdorff(obj, other, spacing)
        elif len(dst_ids):
            d = 0.0
            h = min(hausdorff(obj, dst == t, spacing) for t in dst_ids)
        else:
            d, h = 0.0, math.inf
        rows.append((int(src_area[a]), float(d), float(h)))
    return rows


def _weighted(rows: list[tuple[int, float, float]], k: int) -> float:
    total = sum(r[0] for r in rows)
    return sum(r[0] * r[k] for r in rows) / total


def _object_score(gt_rows, pred_rows, k: int, both_empty: float, one_empty: float) -> float:
    if not gt_rows and not pred_rows:
        return both_empty
    if not gt_rows or not pred_rows:
        return one_empty
    return 0.5 * (_weighted(gt_rows, k) + _weighted(pred_rows, k))


def _f1(tp: int, fp: int, fn: int) -> float:
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def glas_scores(pred_instances, gt_instances, spacing=None) -> dict:
    """GlaS scores of one image (see the module docstring).

    Returns ``{"tp", "fp", "fn", "precision", "recall", "f1", "object_dice", "object_hausdorff",
    "pixel_dice", "pixel_hd95", "objects": {"gt": [(area, dice, hausdorff)], "pred": [...]}}``.
    """
    s = _instances(pred_instances, "pred_instances")
    g = _instances(gt_instances, "gt_instances")
    if s.shape != g.shape:
        raise DataError(f"arguments 'pred_instances' {s.shape} and 'gt_instances' {g.shape} differ in shape")
    s_ids, s_inv = np.unique(s, return_inverse=True)
    g_ids, g_inv = np.unique(g, return_inverse=True)
    # contingency table of label pairs (row: pred label index, col: gt label index)
    table = np.bincount(s_inv.ravel() * len(g_ids) + g_inv.ravel(), minlength=len(s_ids) * len(g_ids))
    table = table.reshape(len(s_ids), len(g_ids))
    s_fg, g_fg = s_ids > 0, g_ids > 0
    overlap = table[np.ix_(s_fg, g_fg)]  # objects only, background dropped
    s_area, g_area = table.sum(1)[s_fg], table.sum(0)[g_fg]
    s_ids, g_ids = s_ids[s_fg], g_ids[g_fg]

    tp = 0
    for a in range(len(s_ids)):
        m = _best_match(overlap[a])
        if m >= 0 and overlap[a, m] / g_area[m] > 0.5:
            tp += 1
    fp, fn = len(s_ids) - tp, len(g_ids) - tp

    gt_rows = _side(g, g_ids, g_area, s, s_ids, overlap.T, spacing)
    pred_rows = _side(s, s_ids, s_area, g, g_ids, overlap, spacing)
    return {
        **_detection_and_object_scores(tp, fp, fn, gt_rows, pred_rows),
        "pixel_dice": dice(s > 0, g > 0),
        "pixel_hd95": hd95(s > 0, g > 0, spacing=spacing),
        "objects": {"gt": gt_rows, "pred": pred_rows},
    }


def _detection_and_object_scores(tp: int, fp: int, fn: int, gt_rows, pred_rows) -> dict:
    """Counts, precision/recall/F1 and the area-weighted object Dice and Hausdorff."""
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": tp / (tp + fp) if tp + fp else math.nan,
        "recall": tp / (tp + fn) if tp + fn else math.nan,
        "f1": _f1(tp, fp, fn),
        "object_dice": _object_score(gt_rows, pred_rows, 1, 1.0, 0.0),
        "object_hausdorff": _object_score(gt_rows, pred_rows, 2, 0.0, math.inf),
    }


def glas_dataset_scores(pairs: Iterable[tuple], spacing=None) -> dict:
    """Challenge-style scores over a dataset of ``(pred_instances, gt_instances)`` pairs.

    Also accepts a list of :func:`glas_scores` results. Returns the pooled ``f1``, ``precision``,
    ``recall``, ``object_dice``, ``object_hausdorff`` (over all objects of all images),
    ``pixel_dice`` and ``pixel_hd95`` (means over images where defined), the per-image means
    ``mean_image_f1``, ``mean_image_object_dice``, ``mean_image_object_hausdorff``, the counts,
    and ``per_image`` (the single-image results without their object lists).
    """
    per = [p if isinstance(p, dict) else glas_scores(p[0], p[1], spacing) for p in pairs]
    if not per:
        raise DataError("argument 'pairs' is empty: no image to evaluate")
    tp, fp, fn = (sum(p[k] for p in per) for k in ("tp", "fp", "fn"))
    gt_rows = [r for p in per for r in p["objects"]["gt"]]
    pred_rows = [r for p in per for r in p["objects"]["pred"]]

    def mean(key):
        v = np.array([p[key] for p in per], dtype=float)
        v = v[~np.isnan(v)]
        return float(v.mean()) if v.size else math.nan

    return {
        "n_images": len(per),
        **_detection_and_object_scores(tp, fp, fn, gt_rows, pred_rows),
        "pixel_dice": mean("pixel_dice"),
        "pixel_hd95": mean("pixel_hd95"),
        "mean_image_f1": mean("f1"),
        "mean_image_object_dice": mean("object_dice"),
        "mean_image_object_hausdorff": mean("object_hausdorff"),
        "per_image": [{k: v for k, v in p.items() if k != "objects"} for p in per],
    }
