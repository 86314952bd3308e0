"""Conformal p-values of single images and a two-sample test of a batch against a reference.

Scores are oriented: higher = more suspicious (see :mod:`sibnet.monitor.scores`).

* :func:`p_values`: the conformal p-value of a score s against n reference (calibration) scores,
  ``p = (1 + #{ref >= s}) / (n + 1)``. When the new image and the reference images are
  exchangeable (same distribution, scores computed by a function that does not depend on the
  calibration images), ``P(p <= a) <= a`` for every a, with equality up to 1/(n + 1) for
  continuous scores: flagging images with p <= alpha raises false alarms at rate alpha at most.
* :func:`batch_test`: one-sided Mann-Whitney U test (``scipy.stats.mannwhitneyu``,
  ``alternative="greater"``): are the batch's scores stochastically larger than the reference's?
  Its p-value is valid when the batch images are exchangeable with the reference (a rank test needs
  no distributional assumption); a batch is an alarm when p <= alpha.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from ..errors import ConfigError


def _vector(x, name: str) -> np.ndarray:
    v = np.asarray(x, dtype=np.float64).ravel()
    if not np.isfinite(v).all():
        raise ConfigError(f"{name}: scores must be finite")
    return v


def p_values(reference, scores) -> np.ndarray:
    """Conformal p-values (N,) of ``scores`` against the ``reference`` scores (higher = more suspicious)."""
    ref = np.sort(_vector(reference, "reference"))
    if ref.size == 0:
        raise ConfigError("reference: needs at least one score")
    s = _vector(scores, "scores")
    at_least = ref.size - np.searchsorted(ref, s, side="left")  # #{ref >= s}
    return (1.0 + at_least) / (ref.size + 1.0)


def batch_test(reference, scores, alpha: float = 0.05) -> dict:
    """``{"p_value", "alarm" (p <= alpha), "statistic" (U), "n", "test"}`` of a batch's scores."""
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha!r}")
    ref, s = _vector(reference, "reference"), _vector(scores, "scores")
    if ref.size == 0 or s.size == 0:
        raise ConfigError(f"batch_test: needs reference and batch scores, got {ref.size} and {s.size}")
    res = stats.mannwhitneyu(s, ref, alternative="greater", method="asymptotic")
    p = float(res.pvalue)
    return {"p_value": p, "alarm": bool(p <= alpha), "statistic": float(res.statistic), "n": int(s.size),
            "test": "mann-whitney-u (one-sided: batch scores greater than the reference)"}


__all__ = ["batch_test", "p_values"]
