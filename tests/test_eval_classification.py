"""Classification metrics against torchmetrics, scikit-learn and hand-computed values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import binary_auroc, binary_average_precision

from sibnet.errors import DataError
from sibnet.evaluation.classification import classification_metrics, mean_auroc, to_rows


def test_tiny_case_by_hand():
    # scores 0.1 0.4 0.35 0.8 with labels 0 0 1 1: positive/negative pairs (4 pairs):
    # (0.35 vs 0.1) win, (0.35 vs 0.4) loss, (0.8 vs 0.1) win, (0.8 vs 0.4) win -> AUROC = 3/4.
    # Ranking by score: 0.8 (pos), 0.4 (neg), 0.35 (pos), 0.1 (neg).
    # AP = sum over positives of precision at their rank / n_pos = (1/1 + 2/3) / 2 = 5/6.
    p = np.array([0.1, 0.4, 0.35, 0.8])
    y = np.array([0, 0, 1, 1])
    r = classification_metrics(p, y, ["x"], n_boot=0)
    assert r["per_label"]["x"]["auroc"] == pytest.approx(0.75)
    assert r["per_label"]["x"]["auprc"] == pytest.approx(5 / 6)
    assert mean_auroc(p, y) == pytest.approx(0.75)


def test_ties_count_half():
    # one positive (0.5) and two negatives (0.5, 0.2): pairs win 1 + tie 0.5 -> 1.5 / 2 = 0.75
    assert mean_auroc([0.5, 0.5, 0.2], [1, 0, 0]) == pytest.approx(0.75)


def test_against_torchmetrics_multilabel_with_nan():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, (80, 4)).astype(float)
    p = 1 / (1 + np.exp(-(2 * y - 1 + rng.normal(0, 1.5, y.shape))))
    y[rng.random(y.shape) < 0.1] = np.nan
    r = classification_metrics(p, y, list("abcd"), n_boot=0)
    ref_auroc, ref_ap = [], []
    for j, name in enumerate("abcd"):
        keep = ~np.isnan(y[:, j])
        pt = torch.tensor(p[keep, j])
        yt = torch.tensor(y[keep, j]).long()
        ref_auroc.append(float(binary_auroc(pt, yt)))
        ref_ap.append(float(binary_average_precision(pt, yt)))
        assert r["per_label"][name]["auroc"] == pytest.approx(ref_auroc[-1], abs=1e-6)
        assert r["per_label"][name]["auprc"] == pytest.approx(ref_ap[-1], abs=1e-6)
        assert r["per_label"][name]["n"] == int(keep.sum())
    assert r["mean"]["auroc"] == pytest.approx(np.mean(ref_auroc), abs=1e-6)
    assert r["mean"]["auprc"] == pytest.approx(np.mean(ref_ap), abs=1e-6)
    assert mean_auroc(torch.tensor(p), torch.tensor(y)) == pytest.approx(np.mean(ref_auroc), abs=1e-6)


def test_multiclass_indices_equal_one_hot_one_vs_rest():
    rng = np.random.default_rng(1)
    cls = rng.integers(0, 3, 60)
    logits = np.eye(3)[cls] * 1.5 + rng.normal(0, 1, (60, 3))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    a = classification_metrics(probs, cls, ["r", "g", "b"], n_boot=0)
    b = classification_metrics(probs, np.eye(3)[cls], ["r", "g", "b"], n_boot=0)
    assert a["per_label"] == b["per_label"]
    for j, name in enumerate("rgb"):
        ref = float(binary_auroc(torch.tensor(probs[:, j]), torch.tensor(cls == j).long()))
        assert a["per_label"][name]["auroc"] == pytest.approx(ref, abs=1e-6)


def test_single_class_label_gives_nan_with_note_and_is_left_out_of_mean():
    p = np.array([[0.9, 0.2], [0.1, 0.3], [0.8, 0.9], [0.3, 0.1]])
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]], dtype=float)
    r = classification_metrics(p, y, ["pos", "never"], n_boot=50)
    assert r["per_label"]["never"]["auroc"] is None
    assert "only class 0" in r["per_label"]["never"]["note"]
    assert any("never" in n for n in r["notes"])
    assert r["per_label"]["pos"]["auroc"] == 1.0
    assert r["mean"]["auroc"] == 1.0 and r["mean"]["n_labels"] == 1
    assert mean_auroc(p, y) == 1.0
    assert math.isnan(mean_auroc(p[:, 1], y[:, 1]))


def test_bootstrap_contains_estimate_deterministic_and_counts_skips():
    rng = np.random.default_rng(0)
    y = (rng.random((40, 2)) < 0.2).astype(float)
    p = y * 0.6 + rng.random((40, 2))
    r1 = classification_metrics(p, y, ["a", "b"], n_boot=150, seed=7)
    r2 = classification_metrics(p, y, ["a", "b"], n_boot=150, seed=7)
    r3 = classification_metrics(p, y, ["a", "b"], n_boot=150, seed=8)
    assert r1 == r2
    assert r1["per_label"]["a"]["auroc_ci"] != r3["per_label"]["a"]["auroc_ci"]
    for key in ("a", "b"):
        d = r1["per_label"][key]
        assert d["auroc_ci"][0] <= d["auroc"] <= d["auroc_ci"][1]
        assert d["auprc_ci"][0] <= d["auprc"] <= d["auprc_ci"][1]
        assert 0 < d["n_boot_used"] <= 150
    m = r1["mean"]
    assert m["auroc_ci"][0] <= m["auroc"] <= m["auroc_ci"][1]
    assert m["n_boot_used"] <= min(r1["per_label"][k]["n_boot_used"] for k in "ab")


def test_bootstrap_skips_single_class_resamples():
    # one positive among 10 images: a resample misses it with probability 0.9**10 ~ 0.35
    p = np.linspace(0, 1, 10)
    y = np.zeros(10)
    y[-1] = 1
    r = classification_metrics(p, y, ["rare"], n_boot=400, seed=0)
    used = r["per_label"]["rare"]["n_boot_used"]
    assert 200 < used < 330  # about 0.65 * 400 = 261
    assert any("skipped" in n for n in r["notes"])
    # a resample that contains the positive ranks it first: AUROC 1 everywhere
    assert r["per_label"]["rare"]["auroc_ci"] == [1.0, 1.0]


def test_json_and_rows():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, (30, 2)).astype(float)
    y[:, 1] = 0
    r = classification_metrics(rng.random((30, 2)), y, ["a", "b"], n_boot=20)
    text = json.dumps(r, allow_nan=False)
    assert json.loads(text) == r
    rows = to_rows(r)
    assert [row["label"] for row in rows] == ["a", "b", "mean"]
    assert rows[0]["auroc"] == r["per_label"]["a"]["auroc"]
    assert rows[1]["auroc"] is None


@pytest.mark.parametrize(
    "probs,labels,names,match",
    [
        (np.zeros((3, 2)), np.array([[0, 1], [1, -1], [0, 0]]), ["a", "b"], "row 1, column 1"),
        (np.array([[0.1, np.nan]]), np.array([[0, 1]]), ["a", "b"], "'probs'.*row 0, column 1"),
        (np.zeros((3, 2)), np.zeros((4, 2)), ["a", "b"], "same shape"),
        (np.zeros((3, 2)), np.zeros((3, 2)), ["a"], "class_names"),
        (np.zeros((3, 3)), np.array([0, 1, 3]), ["a", "b", "c"], "row 2"),
    ],
)
def test_bad_input_names_the_place(probs, labels, names, match):
    with pytest.raises(DataError, match=match):
        classification_metrics(probs, labels, names, n_boot=0)


def test_vectorised_bootstrap_equals_scikit_learn_on_each_resample():
    from sklearn.metrics import average_precision_score, roc_auc_score

    from sibnet.evaluation.classification import weighted_auroc_ap

    rng = np.random.default_rng(5)
    s = np.round(rng.random(40), 1)  # many tied scores
    y = (rng.random(40) < 0.3).astype(float)
    idx = rng.integers(0, 40, (60, 40))
    counts = np.zeros((60, 40), dtype=int)
    np.add.at(counts, (np.arange(60)[:, None], idx), 1)
    auroc, ap = weighted_auroc_ap(s, y, counts)
    checked = 0
    for r in range(60):
        ys, ss = y[idx[r]], s[idx[r]]
        if ys.min() == ys.max():
            assert math.isnan(auroc[r]) and math.isnan(ap[r])
            continue
        assert auroc[r] == pytest.approx(roc_auc_score(ys, ss), abs=1e-12)
        assert ap[r] == pytest.approx(average_precision_score(ys, ss), abs=1e-12)
        checked += 1
    assert checked > 40
