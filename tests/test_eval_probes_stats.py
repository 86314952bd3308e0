"""Probes on frozen features, paired statistics against scipy, Gaussian-noise robustness."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from sibnet.errors import DataError
from sibnet.evaluation.probes import PROBES, evaluate_probes
from sibnet.evaluation.robustness import DEFAULT_SIGMAS, add_gaussian_noise
from sibnet.evaluation.statistics import mean_sd, paired_difference, wilcoxon_floor


# ---------------------------------------------------------------- probes
def _split(n_train=160, n_test=300, separable=True, seed=0):
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    y = rng.integers(0, 2, (n, 3)).astype(float)
    signal = 3.0 * y if separable else np.zeros_like(y)
    x = np.c_[signal + rng.normal(0, 1, (n, 3)), rng.normal(0, 1, (n, 13))]
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def test_probes_separate_separable_features():
    r = evaluate_probes(*_split(), class_names=["a", "b", "c"])
    assert set(r) == set(PROBES)
    for p in PROBES:
        assert r[p]["mean_auroc"] > 0.9, (p, r[p])
        assert all(v["auroc"] > 0.85 for v in r[p]["per_label"].values())


def test_probes_are_chance_on_noise_and_deterministic():
    split = _split(separable=False)
    r = evaluate_probes(*split)
    for p in PROBES:
        assert abs(r[p]["mean_auroc"] - 0.5) < 0.1, (p, r[p]["mean_auroc"])
    assert evaluate_probes(*split, probes=["random_forest"], seed=0) == {"random_forest": r["random_forest"]}


def test_probes_multiclass_indices_and_undefined_labels():
    rng = np.random.default_rng(2)
    cls = rng.integers(0, 3, 240)
    x = np.eye(3)[cls] * 3 + rng.normal(0, 1, (240, 3))
    r = evaluate_probes(x[:160], cls[:160], x[160:], cls[160:], probes=["linear_svm"])
    assert list(r["linear_svm"]["per_label"]) == ["class_0", "class_1", "class_2"]
    assert r["linear_svm"]["mean_auroc"] > 0.9
    # a label constant in the train split gets no probe, a note, and stays out of the mean
    y = np.c_[cls == 0, np.zeros(240)].astype(float)
    r = evaluate_probes(x[:160], y[:160], x[160:], y[160:], class_names=["zero", "never"], probes=["rbf_svm"])
    assert r["rbf_svm"]["per_label"]["never"]["auroc"] is None
    assert r["rbf_svm"]["mean_auroc"] == r["rbf_svm"]["per_label"]["zero"]["auroc"]
    assert "never" in r["rbf_svm"]["notes"][0]


def test_probe_bad_input():
    x = np.zeros((4, 2))
    with pytest.raises(DataError, match="unknown probe"):
        evaluate_probes(x, [0, 1, 0, 1], x, [0, 1, 0, 1], probes=["knn"])
    with pytest.raises(DataError, match="dimensions"):
        evaluate_probes(x, [0, 1, 0, 1], np.zeros((4, 3)), [0, 1, 0, 1])
    with pytest.raises(DataError, match="test_labels"):
        evaluate_probes(x, np.zeros((4, 2)), x, np.full((4, 2), 2.0))


# ---------------------------------------------------------------- statistics
def test_paired_difference_against_scipy():
    a = np.array([0.81, 0.83, 0.80, 0.82, 0.85, 0.79, 0.84, 0.80, 0.83, 0.82])
    b = np.array([0.80, 0.80, 0.81, 0.79, 0.82, 0.78, 0.80, 0.81, 0.80, 0.79])
    r = paired_difference(a, b)
    d = a - b
    assert r["n"] == 10 and r["mean_diff"] == pytest.approx(d.mean())
    ci = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert r["ci"] == pytest.approx([ci.low, ci.high])
    assert r["p_wilcoxon"] == pytest.approx(stats.wilcoxon(d).pvalue)
    # by hand: t interval = mean ± t_{0.975, 9} * sd / sqrt(10)
    half = stats.t.ppf(0.975, 9) * d.std(ddof=1) / math.sqrt(10)
    assert r["ci"][1] - r["ci"][0] == pytest.approx(2 * half)


def test_paired_difference_small_zero_and_nan():
    r = paired_difference([0.8, 0.9, 0.7], [0.7, 0.8, 0.6])
    # exact by hand: 3 differences of one sign, the one most extreme of 2^3 sign patterns per side
    assert r["p_wilcoxon"] == pytest.approx(2 / 8) and "smallest attainable Wilcoxon p is 0.25" in r["notes"][0]
    assert r["ci"] == pytest.approx([0.1, 0.1])  # all differences 0.1: zero-width interval
    # 5 pairs, all one sign: the floor 2/32; with one sign flipped on the smallest |d|: 2 * 2/32
    r = paired_difference([0.5, 0.6, 0.7, 0.8, 0.9], [0.51, 0.62, 0.73, 0.84, 0.95])
    assert r["p_wilcoxon"] == pytest.approx(0.0625) == wilcoxon_floor(5)
    r = paired_difference([0.52, 0.6, 0.7, 0.8, 0.9], [0.51, 0.62, 0.73, 0.84, 0.95])
    assert r["p_wilcoxon"] == pytest.approx(0.125)
    r = paired_difference(np.arange(6.0), np.arange(6.0) + [1, 2, 3, 4, 5, 6])
    assert r["p_wilcoxon"] == pytest.approx(2 / 64) and not r["notes"]
    r = paired_difference([0.5] * 7, [0.5] * 7)
    assert math.isnan(r["p_wilcoxon"]) and r["mean_diff"] == 0.0 and "zero" in r["notes"][0]
    r = paired_difference([0.8, np.nan, 0.9, 0.7, 0.6, 0.5, 0.4], [0.7, 0.8, 0.8, 0.6, 0.7, 0.3, 0.2])
    assert r["n"] == 6 and "nan dropped" in r["notes"][0]
    with pytest.raises(DataError, match="matched"):
        paired_difference([1, 2, 3], [1, 2])


def test_mean_sd_format():
    # mean 0.812, sample sd of (0.8, 0.812, 0.824) = 0.012
    assert mean_sd([0.8, 0.812, 0.824]) == "0.812 (0.012)"
    assert mean_sd([0.8, 0.812, 0.824], digits=1, scale=100) == "81.2 (1.2)"
    assert mean_sd([0.5]) == "0.500 (n=1)"
    assert mean_sd([np.nan]) == "nan"


# ---------------------------------------------------------------- robustness
def test_gaussian_noise_deterministic_clipped_and_sized():
    x = torch.rand(8, 1, 64, 64, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    a, b = add_gaussian_noise(x, 0.05, seed=3), add_gaussian_noise(x, 0.05, seed=3)
    assert torch.equal(a, b) and a.dtype == x.dtype and a.shape == x.shape
    assert not torch.equal(a, add_gaussian_noise(x, 0.05, seed=4))
    # x in [0.25, 0.75]: 0.05 noise is clipped with negligible probability; its sd is 0.05
    assert float((a - x).std()) == pytest.approx(0.05, rel=0.03)
    assert float((a - x).mean()) == pytest.approx(0.0, abs=0.002)
    assert torch.equal(add_gaussian_noise(x, 0.0, seed=1), x)
    big = add_gaussian_noise(x, 1.0, seed=0)
    assert float(big.min()) == 0.0 and float(big.max()) == 1.0
    n = add_gaussian_noise(x.numpy(), 0.05, seed=3)
    assert isinstance(n, np.ndarray) and np.array_equal(n, a.numpy())
    assert DEFAULT_SIGMAS == (0, 0.005, 0.01, 0.05, 0.1)


def test_gaussian_noise_refuses_bad_input():
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        add_gaussian_noise(torch.full((2, 2), 255.0), 0.1, 0)
    with pytest.raises(DataError, match="sigma"):
        add_gaussian_noise(torch.zeros(2, 2), -0.1, 0)
    with pytest.raises(DataError, match="floating"):
        add_gaussian_noise(torch.zeros(2, 2, dtype=torch.uint8), 0.1, 0)


def test_fmt_diff_of_one_pair_has_no_interval():
    from sibnet.experiments.tables import fmt_diff

    text, p = fmt_diff(paired_difference([0.6], [0.5]))
    assert text == "+0.100 (n=1)" and p == "n/a"
    text, _ = fmt_diff(paired_difference([0.6, 0.7, 0.65], [0.5, 0.55, 0.6]))
    assert "[" in text and "nan" not in text
