"""Classification metrics: per-label AUROC and AUPRC with bootstrap intervals.

Conventions
-----------
* ``probs`` is (N, K): any score that ranks images (probabilities, logits); AUROC and average
  precision depend only on the ranking. ``labels`` is (N, K) multi-hot with values 0, 1 or ``nan``
  (``nan`` = masked out: that image is ignored for that label only). Single-label (multiclass)
  input is given either as one-hot (N, K) or as class indices (N,); it is scored one-vs-rest per
  class. A 1-D ``probs`` with 1-D 0/1 ``labels`` is one binary label (K = 1).
* Uncertain labels (-1) must be resolved by a policy before evaluation; they are refused.
* AUROC is :func:`sklearn.metrics.roc_auc_score`, AUPRC is average precision
  (:func:`sklearn.metrics.average_precision_score`, the step-wise area, no interpolation).
* A label whose (non-nan) values are all 0 or all 1 has no AUROC/AUPRC: ``nan`` with a note.
  Means are over the labels that have a value.
* Bootstrap: images are resampled with replacement (``n_boot`` times, ``numpy.random.default_rng
  (seed)``); percentile interval at level ``ci``. Point estimates come from scikit-learn; the
  resamples use :func:`weighted_auroc_ap`, the same quantities computed for all resamples at once
  from resampling counts (checked against scikit-learn in the tests). A resample in which a label has one class only
  is skipped for that label; for the means, a resample is used only when every label that has a
  point estimate is defined in it (so the mean is always over the same labels). The number of
  resamples used is reported (``n_boot_used``).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from sibnet.errors import DataError

__all__ = ["as_arrays", "binary_scores", "classification_metrics", "mean_auroc", "to_rows", "weighted_auroc_ap"]


def _to_numpy(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise DataError(f"argument {name!r} is not numeric: {err}") from None


def as_arrays(probs, labels, num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Check and convert ``probs`` and ``labels`` to float64 arrays of shape (N, K).

    Class-index labels (N,) next to probs (N, K > 1) are one-hot encoded. Raises
    :class:`DataError` naming the argument, row and column of any bad value.
    """
    p = _to_numpy(probs, "probs")
    y = _to_numpy(labels, "labels")
    if p.ndim == 1:
        p = p[:, None]
    if p.ndim != 2:
        raise DataError(f"argument 'probs' must have shape (N, K), got {tuple(p.shape)}")
    n, k = p.shape
    if y.ndim == 1 and k > 1:
        if y.shape[0] != n:
            raise DataError(f"argument 'labels' has {y.shape[0]} rows but 'probs' has {n}")
        bad = ~np.isfinite(y) | (y != np.round(y)) | (y < 0) | (y >= k)
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"argument 'labels': class index {y[r]!r} at row {r} is not an integer in [0, {k})"
            )
        y = np.eye(k)[y.astype(int)]
    elif y.ndim == 1:
        y = y[:, None]
    if y.shape != p.shape:
        raise DataError(
            f"arguments 'probs' {tuple(p.shape)} and 'labels' {tuple(y.shape)} must have the same shape"
        )
    if num_classes is not None and k != num_classes:
        raise DataError(f"argument 'probs' has {k} columns but {num_classes} class names were given")
    bad_p = ~np.isfinite(p)
    if bad_p.any():
        r, c = map(int, np.argwhere(bad_p)[0])
        raise DataError(f"argument 'probs' has a non-finite value {p[r, c]!r} at row {r}, column {c}")
    bad_y = ~np.isnan(y) & (y != 0) & (y != 1)
    if bad_y.any():
        r, c = map(int, np.argwhere(bad_y)[0])
        raise DataError(
            f"argument 'labels' has value {y[r, c]!r} at row {r}, column {c}; expected 0, 1 or nan "
            "(resolve uncertain labels with a policy before evaluation)"
        )
    return p, y


def binary_scores(p: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """AUROC and AP of one label (nan rows already removed); nan when one class only."""
    if y.size == 0 or y.min() == y.max():
        return math.nan, math.nan
    return float(roc_auc_score(y, p)), float(average_precision_score(y, p))


def _per_label(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    k = p.shape[1]
    auroc, ap = np.full(k, np.nan), np.full(k, np.nan)
    for j in range(k):
        keep = ~np.isnan(y[:, j])
        auroc[j], ap[j] = binary_scores(p[keep, j], y[keep, j])
    return auroc, ap


def weighted_auroc_ap(scores: np.ndarray, y: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROC and average precision of one label under B sets of integer sample weights.

    ``weights`` (B, N) are the counts of each image in B bootstrap resamples. The result equals
    ``roc_auc_score`` / ``average_precision_score`` on the resampled data (ties between scores
    count one half in AUROC; AP steps at each distinct score), computed for all resamples at once.
    Entries are ``nan`` where a resample has one class only.
    """
    order = np.argsort(-scores, kind="stable")
    s_sorted = scores[order]
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    w = weights[:, order].astype(np.float64)
    pos = np.add.reduceat(w * (y[order] == 1), starts, axis=1)  # (B, groups of tied scores)
    neg = np.add.reduceat(w * (y[order] == 0), starts, axis=1)
    tp, fp = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
    n_pos, n_neg = tp[:, -1], fp[:, -1]
    ok = (n_pos > 0) & (n_neg > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auroc = (neg * (tp - 0.5 * pos)).sum(axis=1) / (n_pos * n_neg)
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-300), 0.0)
        ap = (pos * precision).sum(axis=1) / n_pos
    return np.where(ok, auroc, np.nan), np.where(ok, ap, np.nan)


def mean_auroc(probs, labels) -> float:
    """Mean AUROC over the labels that have both classes (nan rows ignored); no bootstrap.

    Cheap enough for early stopping. Returns ``nan`` when no label has both classes.
    """
    p, y = as_arrays(probs, labels)
    auroc = np.full(p.shape[1], np.nan)
    for j in range(p.shape[1]):
        keep = ~np.isnan(y[:, j])
        yj = y[keep, j]
        if yj.size and yj.min() != yj.max():
            auroc[j] = roc_auc_score(yj, p[keep, j])
    return float(np.nanmean(auroc)) if np.isfinite(auroc).any() else math.nan


def _interval(samples: list[float], ci: float) -> tuple[float, float]:
    if not samples:
        return math.nan, math.nan
    a = (1.0 - ci) / 2.0
    lo, hi = np.percentile(np.asarray(samples), [100 * a, 100 * (1 - a)])
    return float(lo), float(hi)


def _check_options(class_names: Sequence[str] | None, k: int, n_boot: int, ci: float) -> tuple[list[str], int]:
    """Check the options of :func:`classification_metrics` for ``k`` labels.

    Returns:
        The class names as strings (``class_0``, ``class_1``, ... when none are given) and ``n_boot`` as an int.

    Raises:
        DataError: When there are not ``k`` names or two are the same, ``ci`` is not in (0, 1) or ``n_boot`` is not
            a non-negative integer.
    """
    if class_names is None:
        class_names = [f"class_{j}" for j in range(k)]
    names = [str(c) for c in class_names]
    if len(names) != k:
        raise DataError(f"argument 'class_names' has {len(names)} names but 'probs' has {k} columns")
    if len(set(names)) != k:
        raise DataError("argument 'class_names' has duplicate names")
    if not 0 < ci < 1:
        raise DataError(f"argument 'ci' must be in (0, 1), got {ci!r}")
    if int(n_boot) != n_boot or n_boot < 0:
        raise DataError(f"argument 'n_boot' must be a non-negative integer, got {n_boot!r}")
    return names, int(n_boot)


def _undefined_notes(y: np.ndarray, valid: np.ndarray, class_names: list[str]) -> tuple[list[str], list[str]]:
    """Say why each label that has no point estimate (``valid`` False) has none.

    Returns:
        The note of each label (empty where it has a value) and, in label order, the same notes prefixed by the
        label's name.
    """
    notes: list[str] = []
    per_label_notes = [""] * len(class_names)
    for j in np.flatnonzero(~valid):
        yj = y[~np.isnan(y[:, j]), j]
        what = "no labelled images" if yj.size == 0 else f"only class {int(yj[0])} present"
        per_label_notes[j] = f"{what}: AUROC and AUPRC undefined"
        notes.append(f"label {class_names[j]!r}: {per_label_notes[j]}")
    return per_label_notes, notes


def _bootstrap(
    p: np.ndarray, y: np.ndarray, valid: np.ndarray, n_boot: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """AUROC and AP of the ``valid`` labels in ``n_boot`` resamples of the images.

    Resamples are drawn from ``numpy.random.default_rng(seed)`` 256 at a time, which bounds the memory to a
    (256, N) array of counts.

    Returns:
        Two (n_boot, K) arrays, AUROC and AP: ``nan`` for a label not in ``valid`` and where a resample has one
        class only.
    """
    n, k = p.shape
    rng = np.random.default_rng(seed)
    boot_a = np.full((n_boot, k), np.nan)
    boot_b = np.full((n_boot, k), np.nan)
    for start in range(0, n_boot, 256):
        size = min(256, n_boot - start)
        idx = rng.integers(0, n, size=(size, n))
        counts = np.zeros((size, n), dtype=np.int64)
        np.add.at(counts, (np.arange(size)[:, None], idx), 1)
        for j in np.flatnonzero(valid):
            keep = ~np.isnan(y[:, j])
            a, b = weighted_auroc_ap(p[keep, j], y[keep, j], counts[:, keep])
            boot_a[start : start + size, j], boot_b[start : start + size, j] = a, b
    return boot_a, boot_b


def _num(x: float | None) -> float | None:
    """``x`` as a float; ``None`` (JSON ``null``) when it is missing or not finite."""
    return None if x is None or not math.isfinite(x) else float(x)


def _ci(samples: list[float], ci: float) -> list[float | None]:
    """``[lo, hi]`` percentile interval of ``samples`` at level ``ci``; both ``None`` when there are no samples."""
    return [_num(v) for v in _interval(samples, ci)]


def _finite(column: np.ndarray) -> list[float]:
    """The finite values of one column of bootstrap estimates (the resamples in which the label is defined)."""
    return column[np.isfinite(column)].tolist()


def _mean_entry(
    auroc: np.ndarray, ap: np.ndarray, valid: np.ndarray, boot_a: np.ndarray, boot_b: np.ndarray, ci: float
) -> dict:
    """The ``mean`` entry: means over the ``valid`` labels, with intervals from the resamples that define them all."""
    n_boot = boot_a.shape[0]
    all_defined = np.isfinite(boot_a[:, valid]).all(axis=1) if valid.any() else np.zeros(n_boot, bool)
    boot_mean_auroc = boot_a[all_defined][:, valid].mean(axis=1).tolist()
    boot_mean_ap = boot_b[all_defined][:, valid].mean(axis=1).tolist()
    return {
        "auroc": _num(float(auroc[valid].mean())) if valid.any() else None,
        "auroc_ci": _ci(boot_mean_auroc, ci),
        "auprc": _num(float(ap[valid].mean())) if valid.any() else None,
        "auprc_ci": _ci(boot_mean_ap, ci),
        "n_labels": int(valid.sum()),
        "n_boot_used": len(boot_mean_auroc),
    }


def _skip_notes(per_label: dict, valid: np.ndarray, n_boot: int) -> list[str]:
    """One note for each ``valid`` label that some resamples had to skip (one class only in them)."""
    notes = []
    for j, (name, entry) in enumerate(per_label.items()):
        used = entry["n_boot_used"]
        if valid[j] and n_boot and used < n_boot:
            notes.append(f"label {name!r}: {n_boot - used} of {n_boot} resamples had one class only and were skipped")
    return notes


def classification_metrics(
    probs,
    labels,
    class_names: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> dict:
    """Per-label and mean AUROC / AUPRC with bootstrap percentile intervals.

    Returns a JSON-serialisable dict::

        {"n_images", "n_boot", "seed", "ci",
         "per_label": {name: {"auroc", "auroc_ci": [lo, hi], "auprc", "auprc_ci",
                              "n", "n_pos", "n_boot_used", "note"}},
         "mean": {"auroc", "auroc_ci", "auprc", "auprc_ci", "n_labels", "n_boot_used"},
         "notes": [...]}

    Missing values are ``None`` in the dict (JSON ``null``); see the module docstring for the
    conventions.
    """
    p, y = as_arrays(probs, labels)
    n, k = p.shape
    class_names, n_boot = _check_options(class_names, k, n_boot, ci)

    auroc, ap = _per_label(p, y)
    valid = np.isfinite(auroc)
    per_label_notes, notes = _undefined_notes(y, valid, class_names)
    boot_a, boot_b = _bootstrap(p, y, valid, n_boot, seed)

    per_label = {}
    for j, name in enumerate(class_names):
        boot_auroc = _finite(boot_a[:, j])
        per_label[name] = {
            "auroc": _num(auroc[j]),
            "auroc_ci": _ci(boot_auroc, ci),
            "auprc": _num(ap[j]),
            "auprc_ci": _ci(_finite(boot_b[:, j]), ci),
            "n": int((~np.isnan(y[:, j])).sum()),
            "n_pos": int(np.nansum(y[:, j])),
            "n_boot_used": len(boot_auroc),
            "note": per_label_notes[j],
        }
    mean = _mean_entry(auroc, ap, valid, boot_a, boot_b, ci)
    if not valid.any():
        notes.append("no label has both classes: mean AUROC and AUPRC undefined")
    notes += _skip_notes(per_label, valid, n_boot)
    return {
        "n_images": int(n),
        "n_boot": n_boot,
        "seed": int(seed),
        "ci": float(ci),
        "per_label": per_label,
        "mean": mean,
        "notes": notes,
    }


def to_rows(result: dict) -> list[dict]:
    """Flatten :func:`classification_metrics` output to CSV rows (one per label, then ``mean``)."""
    rows = []
    for name, r in list(result["per_label"].items()) + [("mean", result["mean"])]:
        rows.append(
            {
                "label": name,
                "auroc": r["auroc"],
                "auroc_lo": r["auroc_ci"][0],
                "auroc_hi": r["auroc_ci"][1],
                "auprc": r["auprc"],
                "auprc_lo": r["auprc_ci"][0],
                "auprc_hi": r["auprc_ci"][1],
                "n": r.get("n", result["n_images"]),
                "n_pos": r.get("n_pos", ""),
                "n_boot_used": r["n_boot_used"],
                "note": r.get("note", ""),
            }
        )
    return rows
