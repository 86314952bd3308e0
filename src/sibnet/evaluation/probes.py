"""Simple classifiers on frozen learned features (the paper's Table 5).

Each probe is a scikit-learn pipeline ``StandardScaler`` → classifier, fitted on the train split's
features (N, D) and scored by AUROC (and AUPRC) on the test split:

``linear_svm``     ``LinearSVC(C=1)``, score = decision function; solved in the primal
                   (``dual=False``): on DenseNet features (more dimensions than training images)
                   liblinear's dual solver stops at its iteration limit after seconds per label
                   with a higher objective, where the primal one converges in a few hundred
                   iterations (same objective, squared hinge with L2 penalty)
``rbf_svm``        ``SVC(kernel="rbf", C=1, gamma="scale")``, score = decision function
``random_forest``  ``RandomForestClassifier(n_estimators=200)``, score = P(positive)

All are seeded with ``seed``. Multi-label (and multiclass, one-hot or class indices) targets are
handled one-vs-rest: one binary probe per label, fitted on the train rows where that label is not
``nan``. A label with one class only in the train split gets no probe (``nan``, with a note); one
with one class only in the test split gets ``nan`` AUROC (with a note). Means are over the labels
with a value.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC

from sibnet.errors import DataError
from sibnet.evaluation.classification import as_arrays, binary_scores

__all__ = ["PROBES", "PROBE_VERSION", "make_probe", "evaluate_probes"]

PROBES = ("linear_svm", "rbf_svm", "random_forest")
PROBE_VERSION = 2  # bumped when a probe's definition or solver changes (cached results are refitted)


def make_probe(name: str, seed: int = 0):
    """An unfitted, seeded scikit-learn pipeline (standardisation + classifier)."""
    if name == "linear_svm":
        clf = LinearSVC(C=1.0, dual=False, max_iter=20000, random_state=seed)
    elif name == "rbf_svm":
        clf = SVC(kernel="rbf", C=1.0, gamma="scale", random_state=seed)
    elif name == "random_forest":
        clf = RandomForestClassifier(n_estimators=200, random_state=seed, n_jobs=1)
    else:
        raise DataError(f"unknown probe {name!r}; choose from {', '.join(PROBES)}")
    return make_pipeline(StandardScaler(), clf)


def _features(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    f = np.asarray(x, dtype=np.float64)
    if f.ndim != 2:
        raise DataError(f"argument {name!r} must have shape (N, D), got {f.shape}")
    if not np.isfinite(f).all():
        r, c = map(int, np.argwhere(~np.isfinite(f))[0])
        raise DataError(f"argument {name!r} has a non-finite value at row {r}, column {c}")
    return f


def _targets(labels, n: int, k: int, name: str) -> np.ndarray:
    """(N, K) targets with 0, 1, nan; class indices are one-hot encoded (one-vs-rest)."""
    try:
        if k == 1 and np.ndim(labels) == 1:
            labels = np.reshape(labels, (-1, 1))
        y = as_arrays(np.zeros((n, k)), labels)[1]
    except DataError as err:
        raise DataError(f"argument {name!r}: {err}") from None
    return y


def _score(model, x: np.ndarray) -> np.ndarray:
    if hasattr(model, "decision_function"):
        return model.decision_function(x)
    return model.predict_proba(x)[:, 1]


def _n_labels(train_labels, test_labels, class_names) -> int:
    """The number of labels K: the class names, else the columns of 2-D labels, else from the class indices."""
    if class_names is not None:
        return len(class_names)
    if np.ndim(train_labels) == 2:
        return np.shape(train_labels)[1]
    if np.ndim(test_labels) == 2:
        return np.shape(test_labels)[1]
    # class indices on both sides; 0/1 indices are one binary label
    k = int(np.nanmax(np.concatenate([np.ravel(train_labels), np.ravel(test_labels)]))) + 1
    return 1 if k <= 2 else k


def _check_inputs(train_features, train_labels, test_features, test_labels, class_names, probes):
    """Check and convert the arguments of :func:`evaluate_probes`, the probe names included, before any fitting.

    Returns:
        ``(xtr, ytr, xte, yte, names)``: features (N, D), targets (N, K) with 0, 1, nan, and the K label names.
    """
    xtr, xte = _features(train_features, "train_features"), _features(test_features, "test_features")
    if xtr.shape[1] != xte.shape[1]:
        raise DataError(f"train features have {xtr.shape[1]} dimensions but test features have {xte.shape[1]}")
    k = _n_labels(train_labels, test_labels, class_names)
    ytr = _targets(train_labels, len(xtr), k, "train_labels")
    yte = _targets(test_labels, len(xte), k, "test_labels")
    names = [str(c) for c in class_names] if class_names is not None else [f"class_{j}" for j in range(k)]
    if len(names) != k:
        raise DataError(f"argument 'class_names' has {len(names)} names but the labels have {k} columns")
    for p in probes:
        make_probe(p)  # validates the names before any fitting
    return xtr, ytr, xte, yte, names


def _num(v: float) -> float | None:
    """``v`` as a float; ``None`` (JSON ``null``) when it is not finite."""
    return None if not math.isfinite(v) else float(v)


def _fit_and_score(probe: str, seed: int, xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray):
    """AUROC and AUPRC on the test rows of one binary probe fitted on the train rows (``nan`` rows left out)."""
    tr, te = ~np.isnan(ytr), ~np.isnan(yte)
    model = make_probe(probe, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(xtr[tr], ytr[tr].astype(int))
    return binary_scores(_score(model, xte[te]), yte[te])


def _run_probe(probe: str, seed: int, xtr, ytr, xte, yte, names: list[str]) -> dict:
    """One probe per label: the per-label scores, their means over the labels with a value, and the notes."""
    per_label, notes = {}, []
    aurocs, auprcs = [], []
    for j, name in enumerate(names):
        if len(np.unique(ytr[~np.isnan(ytr[:, j]), j])) < 2:
            notes.append(f"label {name!r}: one class only in the train split, no probe fitted")
            per_label[name] = {"auroc": None, "auprc": None}
            continue
        auroc, auprc = _fit_and_score(probe, seed, xtr, ytr[:, j], xte, yte[:, j])
        if math.isnan(auroc):
            notes.append(f"label {name!r}: one class only in the test split, AUROC undefined")
        else:
            aurocs.append(auroc)
            auprcs.append(auprc)
        per_label[name] = {"auroc": _num(auroc), "auprc": _num(auprc)}
    return {
        "per_label": per_label,
        "mean_auroc": float(np.mean(aurocs)) if aurocs else None,
        "mean_auprc": float(np.mean(auprcs)) if auprcs else None,
        "notes": notes,
    }


def evaluate_probes(
    train_features,
    train_labels,
    test_features,
    test_labels,
    class_names: Sequence[str] | None = None,
    probes: Sequence[str] = PROBES,
    seed: int = 0,
) -> dict:
    """Fit each probe on the train split and score it on the test split.

    Returns ``{name: {"per_label": {label: {"auroc", "auprc"}}, "mean_auroc", "mean_auprc",
    "notes"}}`` with ``None`` where undefined (JSON-serialisable).
    """
    xtr, ytr, xte, yte, names = _check_inputs(train_features, train_labels, test_features, test_labels,
                                              class_names, probes)
    return {p: _run_probe(p, seed, xtr, ytr, xte, yte, names) for p in probes}
