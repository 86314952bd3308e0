"""Paired comparison of two methods over matched runs (folds x seeds), and mean (sd) formatting.

:func:`paired_difference` takes the scores of methods A and B on the same runs (same fold and
seed at the same position) and reports, for d = a − b: the mean, the 95% (``ci``) Student-t
interval ``mean ± t_{n−1} · sd / sqrt(n)`` (sd with ddof = 1), and the two-sided Wilcoxon
signed-rank p-value (``scipy.stats.wilcoxon`` defaults: zero differences dropped, exact
distribution for small samples). With n non-zero differences the smallest attainable two-sided p
is 2 / 2^n (0.0625 for 5 pairs, 0.031 for 6): below 6 pairs no result can reach p < 0.05, which a
note says; the p-value is still reported (every difference of one sign gives exactly that floor).
When every difference is zero p is ``nan``. Pairs with ``nan`` on either side are dropped, with a
note.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from sibnet.errors import DataError

__all__ = ["finite_mean", "finite_sd", "mean_sd", "paired_difference", "wilcoxon_floor"]

#: below this many non-zero differences no two-sided Wilcoxon p can fall under 0.05
MIN_WILCOXON_PAIRS = 6


def wilcoxon_floor(n: int) -> float:
    """The smallest two-sided exact Wilcoxon signed-rank p attainable with ``n`` non-zero differences."""
    return min(1.0, 2.0 / 2.0 ** n)


def _vector(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    try:
        v = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"argument {name!r} must be a sequence of numbers") from None
    if v.ndim != 1:
        v = v.ravel()
    if np.isinf(v).any():
        raise DataError(f"argument {name!r} contains inf at position {int(np.flatnonzero(np.isinf(v))[0])}")
    return v


def paired_difference(a, b, ci: float = 0.95) -> dict:
    """Mean difference a − b over matched runs, its t-interval and a Wilcoxon p-value.

    Returns ``{"n", "mean_a", "mean_b", "mean_diff", "sd_diff", "ci": [lo, hi], "p_wilcoxon",
    "notes"}``; undefined values are ``nan``.
    """
    x, y = _vector(a, "a"), _vector(b, "b")
    if x.shape != y.shape:
        raise DataError(f"arguments 'a' ({x.size} runs) and 'b' ({y.size} runs) must be matched run by run")
    if not 0 < ci < 1:
        raise DataError(f"argument 'ci' must be in (0, 1), got {ci!r}")
    notes = []
    keep = ~(np.isnan(x) | np.isnan(y))
    if not keep.all():
        notes.append(f"{int((~keep).sum())} pair(s) with nan dropped")
    x, y = x[keep], y[keep]
    d = x - y
    n = d.size
    out = {
        "n": int(n),
        "mean_a": float(x.mean()) if n else math.nan,
        "mean_b": float(y.mean()) if n else math.nan,
        "mean_diff": float(d.mean()) if n else math.nan,
        "sd_diff": float(d.std(ddof=1)) if n > 1 else math.nan,
        "ci": [math.nan, math.nan],
        "p_wilcoxon": math.nan,
        "notes": notes,
    }
    if n > 1:
        sem = out["sd_diff"] / math.sqrt(n)
        if sem == 0:
            out["ci"] = [out["mean_diff"], out["mean_diff"]]
        else:
            lo, hi = stats.t.interval(ci, n - 1, loc=out["mean_diff"], scale=sem)
            out["ci"] = [float(lo), float(hi)]
    else:
        notes.append("fewer than 2 pairs: no interval")
    nonzero = int(np.count_nonzero(d))
    if nonzero == 0:
        notes.append("all differences are zero: Wilcoxon p undefined" if n else "no pairs: Wilcoxon p undefined")
    else:
        out["p_wilcoxon"] = float(stats.wilcoxon(x, y).pvalue)
        if nonzero < MIN_WILCOXON_PAIRS:
            notes.append(f"{nonzero} non-zero difference(s): the smallest attainable Wilcoxon p is "
                         f"{wilcoxon_floor(nonzero):.3g}")
    return out


def finite_mean(values) -> float | None:
    """The mean of the finite values (None when there is none)."""
    a = np.asarray(values, float)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else None


def finite_sd(values) -> float | None:
    """The sample sd (ddof = 1) of the finite values (None with fewer than two)."""
    a = np.asarray(values, float)
    a = a[np.isfinite(a)]
    return float(a.std(ddof=1)) if a.size > 1 else None


def mean_sd(values, digits: int = 3, scale: float = 1.0) -> str:
    """``"0.812 (0.013)"``: mean and sample sd (ddof = 1) of the non-nan values, times ``scale``.

    One value gives ``"0.812 (n=1)"`` (no sd); no value gives ``"nan"``. ``scale=100`` prints percentages
    as in the paper's tables.
    """
    v = _vector(values, "values")
    v = v[~np.isnan(v)] * scale
    if v.size == 0:
        return "nan"
    sd = f"{v.std(ddof=1):.{digits}f}" if v.size > 1 else "n=1"
    return f"{v.mean():.{digits}f} ({sd})"
