"""How well each monitor score detects shifted inputs and predicts failures, per model and over models.

For one model (:func:`evaluate_model`):

* a profile is fitted on the reference images (the model's validation split; half estimates the
  Mahalanobis Gaussian and the cd/sc standardisation, half calibrates, see :mod:`sibnet.monitor.core`);
* the clean test images and every shifted set are scored;
* **per-image AUROC**: shifted (positive) vs clean test images, for every score (higher =
  more suspicious, so 0.5 = no signal and < 0.5 = the shift moves the score the other way);
* **batch detection rate**: ``n_batches`` batches of ``b`` images drawn at random (without
  replacement within a batch) from the shifted set, each tested against the reference with
  :func:`sibnet.monitor.conformal.batch_test` at ``alpha``; the fraction that raises an alarm. The
  same on the clean test set is the false-alarm rate (it should be near ``alpha``);
* **failure prediction** on the clean test images: an image is an error when any of its labels is
  wrong at probability 0.5 (multi-label; the arg-max class for multi-class); AUROC of the score for
  errors vs correct images, and the area under the risk-coverage curve (AURC: images accepted from
  the least suspicious on, risk = the mean fraction of wrong labels among the accepted, averaged over
  every coverage 1/n .. n/n; lower is better; uncertain labels (-1) count as not wrong).

Over models of one kind (:func:`fmt_range`): the mean and the range [min, max] over the models
(seeds); with one model, the value alone. Between two kinds (:func:`fmt_paired`): the mean difference
over models matched by position (same training seed) with its 95% Student-t interval
(:func:`sibnet.evaluation.statistics.paired_difference`).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score

from ..evaluation.statistics import paired_difference
from .conformal import batch_test
from .core import fit, score
from .scores import SCORES


def detection_rate(reference: np.ndarray, scores: np.ndarray, batch_size: int, alpha: float = 0.05,
                   n_batches: int = 200, seed: int = 0) -> float:
    """Fraction of random batches of ``scores`` that :func:`batch_test` flags at ``alpha``."""
    rng = np.random.default_rng(seed)
    b = min(batch_size, len(scores))
    alarms = sum(batch_test(reference, scores[rng.choice(len(scores), b, replace=False)], alpha)["alarm"]
                 for _ in range(n_batches))
    return alarms / n_batches


def aurc(scores: np.ndarray, risk: np.ndarray) -> float:
    """Area under the risk-coverage curve: accept images by increasing ``scores``; mean selective risk."""
    order = np.argsort(scores, kind="stable")
    r = np.asarray(risk, dtype=np.float64)[order]
    return float(np.mean(np.cumsum(r) / np.arange(1, len(r) + 1)))


def errors_and_risk(logits: np.ndarray, labels: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray]:
    """(any label wrong (N,) bool, fraction of labels wrong (N,)) of a model's predictions."""
    y = np.nan_to_num(np.asarray(labels, dtype=np.float64), nan=-1)
    if task == "multiclass":
        wrong = logits.argmax(1) != y.argmax(1)
        return wrong, wrong.astype(float)
    pred = (logits >= 0).astype(float)
    known = y >= 0
    wrong = (pred != y) & known
    return wrong.any(1), wrong.sum(1) / np.maximum(known.sum(1), 1)


def evaluate_model(model, task: str, reference, clean, shifted: dict, *, method="gradcam", class_names=None,
                   alpha: float = 0.05, batch_sizes=(16, 64), n_batches: int = 200, seed: int = 0,
                   batch_size: int = 32, progress=None) -> dict:
    """Every metric of the module doc for one model. ``shifted``: name -> dataset."""
    profile = fit(model, reference, method=method, task=task, class_names=class_names, seed=seed,
                  batch_size=batch_size)
    if progress:
        progress("reference")
    clean_s = score(model, profile, clean, batch_size=batch_size)
    if progress:
        progress("clean")
    out: dict = {"n_reference": profile.n_fit + profile.n_calibration, "n_calibration": profile.n_calibration,
           "n_clean": len(clean_s["ids"]), "auroc": {}, "detection": {}, "failure": {}, "n_shifted": {}}
    wrong, risk = errors_and_risk(clean_s["logits"], clean_s["labels"], task)
    out["error_rate"] = float(wrong.mean())
    for k in SCORES:
        s = clean_s["scores"][k]
        auc = roc_auc_score(wrong, s) if 0 < wrong.sum() < len(wrong) else math.nan
        out["failure"][k] = {"auroc": float(auc), "aurc": aurc(s, risk)}
    out["failure"]["oracle_aurc"] = aurc(risk, risk)
    out["detection"]["clean"] = {k: {str(b): detection_rate(profile.reference[k], clean_s["scores"][k], b, alpha,
                                                            n_batches, seed) for b in batch_sizes} for k in SCORES}
    for name, ds in shifted.items():
        s = score(model, profile, ds, batch_size=batch_size)["scores"]
        out["n_shifted"][name] = len(s["msp"])
        out["auroc"][name] = {}
        out["detection"][name] = {}
        for k in SCORES:
            y = np.r_[np.zeros(len(clean_s["scores"][k])), np.ones(len(s[k]))]
            out["auroc"][name][k] = float(roc_auc_score(y, np.r_[clean_s["scores"][k], s[k]]))
            out["detection"][name][k] = {str(b): detection_rate(profile.reference[k], s[k], b, alpha, n_batches,
                                                                seed + 1) for b in batch_sizes}
        if progress:
            progress(name)
    return out


def mean_ci(values) -> tuple[float, float, float]:
    """(mean, lo, hi): 95% Student-t interval over the values (nan interval for one value)."""
    v = np.asarray([x for x in values if not (isinstance(x, float) and math.isnan(x))], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan, math.nan
    m = float(v.mean())
    if v.size < 2:
        return m, math.nan, math.nan
    h = float(stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return m, m - h, m + h


def fmt_ci(values, digits: int = 2) -> str:
    """``"mean [lo, hi]"`` with the 95% t-interval."""
    m, lo, hi = mean_ci(values)
    if math.isnan(m):
        return "nan"
    if math.isnan(lo):
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def fmt_range(values, digits: int = 2) -> str:
    """``"mean [min, max]"`` of the non-nan values (one value: the value)."""
    v = np.asarray([x for x in values if not (isinstance(x, float) and math.isnan(x))], dtype=np.float64)
    if v.size == 0:
        return "nan"
    if v.size == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} [{v.min():.{digits}f}, {v.max():.{digits}f}]"


def fmt_paired(a, b, digits: int = 2) -> str:
    """``"+d [lo, hi]"``: mean difference a - b over matched models and its 95% t-interval."""
    d = paired_difference(a, b)
    if d["n"] == 0:
        return "n/a"
    if d["n"] == 1 or math.isnan(d["ci"][0]):
        return f"{d['mean_diff']:+.{digits}f}"
    return f"{d['mean_diff']:+.{digits}f} [{d['ci'][0]:+.{digits}f}, {d['ci'][1]:+.{digits}f}]"


__all__ = ["aurc", "detection_rate", "errors_and_risk", "evaluate_model", "fmt_ci", "fmt_paired", "fmt_range",
           "mean_ci"]
