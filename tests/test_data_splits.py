"""Patient-wise splits: disjoint patients, 80/20 sizes, deterministic."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from sibnet.data.splits import check_disjoint, fold_split, patient_split
from sibnet.errors import ConfigError, DataError


def _patients(n_patients=50, seed=0):
    rng = np.random.default_rng(seed)
    return [f"p{p}" for p in range(n_patients) for _ in range(rng.integers(1, 5))]


def test_fold_split_partitions_patients_80_20_and_is_deterministic():
    pats = _patients()
    vals = []
    for fold in range(5):
        tr, va = fold_split(pats, k=5, fold=fold, seed=7)
        assert not {pats[i] for i in tr} & {pats[i] for i in va}
        assert sorted(np.concatenate([tr, va]).tolist()) == list(range(len(pats)))
        assert {pats[i] for i in va}.__len__() == 10  # 50 patients -> 10 per fold
        np.testing.assert_array_equal(va, fold_split(pats, k=5, fold=fold, seed=7)[1])
        vals.append(va)
    # the validation folds partition the items
    assert sorted(np.concatenate(vals).tolist()) == list(range(len(pats)))
    assert not np.array_equal(vals[0], fold_split(pats, k=5, fold=0, seed=8)[1])


def test_fold_split_one_image_per_patient_is_exactly_80_20():
    pats = [f"p{i}" for i in range(100)]
    tr, va = fold_split(pats, k=5, fold=3, seed=0)
    assert (len(tr), len(va)) == (80, 20)


def test_fold_split_arguments():
    with pytest.raises(ConfigError, match="fold must be"):
        fold_split(["a", "b"], k=2, fold=2)
    with pytest.raises(DataError, match="3 patient"):
        fold_split(["a", "b", "c", "c"], k=5, fold=0)


def test_patient_split_three_way():
    pats = _patients(200, seed=1)
    parts = patient_split(pats, (0.7, 0.1, 0.2), seed=3)
    sets = [{pats[i] for i in p} for p in parts]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert sum(map(len, parts)) == len(pats)
    fracs = np.array([len(p) for p in parts]) / len(pats)
    np.testing.assert_allclose(fracs, (0.7, 0.1, 0.2), atol=0.03)
    again = patient_split(pats, (0.7, 0.1, 0.2), seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def test_check_disjoint_names_patient():
    check_disjoint({"train": ["a", "b", "a"], "test": ["c"]})
    with pytest.raises(DataError, match="patient 'b' appears in both the 'train' and the 'test' split"):
        check_disjoint({"train": ["a", "b"], "test": ["c", "b"]})


def test_patient_split_fraction_check():
    with pytest.raises(ConfigError, match="fractions"):
        patient_split(["a"], (0.5, 0.4))
    assert Counter(len(p) for p in patient_split(["a"] * 4, (0.5, 0.5))) == Counter({4: 1, 0: 1})


def test_fold_split_with_strata_keeps_class_proportions_and_groups():
    rng = np.random.default_rng(0)
    # 60 groups of 1-3 items; a group's items share its class (30 % class 1)
    pats, strata = [], []
    for g in range(60):
        c = int(g % 10 < 3)
        for _ in range(int(rng.integers(1, 4))):
            pats.append(f"g{g}")
            strata.append(c)
    strata = np.asarray(strata)
    vals = []
    for fold in range(5):
        tr, va = fold_split(pats, k=5, fold=fold, seed=3, strata=strata)
        assert not {pats[i] for i in tr} & {pats[i] for i in va}
        assert abs(strata[va].mean() - strata.mean()) < 0.04  # plain GroupKFold: up to 0.063 here
        vals.append(va)
    np.testing.assert_array_equal(np.sort(np.concatenate(vals)), np.arange(len(pats)))
    with pytest.raises(ConfigError, match="strata has 2 entries"):
        fold_split(pats, k=5, fold=0, strata=[0, 1])
