"""CheXpert loader on a generated fixture in the official layout (both release folder names)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from sibnet.data import build_dataset
from sibnet.data.chexpert import OBSERVATIONS, CheXpert
from sibnet.errors import ConfigError, DataError

HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *OBSERVATIONS]
# (path tail, frontal?, {observation: value}) ; values as the official CSV writes them
TRAIN = [
    ("train/patient00001/study1/view1_frontal.jpg", True,
     {"Atelectasis": "-1.0", "Cardiomegaly": "1.0", "Consolidation": "", "Edema": "0.0", "Pleural Effusion": "-1.0"}),
    ("train/patient00001/study1/view2_lateral.jpg", False,
     {"Atelectasis": "1.0", "Cardiomegaly": "1.0", "Consolidation": "", "Edema": "", "Pleural Effusion": ""}),
    ("train/patient00002/study1/view1_frontal.jpg", True,
     {"Atelectasis": "", "Cardiomegaly": "-1.0", "Consolidation": "1.0", "Edema": "-1.0", "Pleural Effusion": "0.0"}),
    ("train/patient00003/study2/view1_frontal.jpg", True,
     {"Atelectasis": "0.0", "Cardiomegaly": "", "Consolidation": "-1.0", "Edema": "1.0", "Pleural Effusion": "1.0",
      "No Finding": ""}),
]
VALID = [("valid/patient64541/study1/view1_frontal.jpg", True,
          {"Atelectasis": "0.0", "Cardiomegaly": "1.0", "Consolidation": "0.0", "Edema": "0.0",
           "Pleural Effusion": "1.0"})]
# expected raw matrix of the frontal training rows (blank -> 0), competition order
RAW = np.array([[-1, 1, 0, 0, -1], [0, -1, 1, -1, 0], [0, 0, -1, 1, 1]], dtype=np.float32)


def make_chexpert(base, release="CheXpert-v1.0-small", train=TRAIN, valid=VALID, size=(40, 32)):
    """Write the official layout under ``base/release`` and return that folder."""
    root = base / release
    rng = np.random.default_rng(0)
    for name, rows in (("train.csv", train), ("valid.csv", valid)):
        root.mkdir(parents=True, exist_ok=True)
        with open(root / name, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(HEADER)
            for tail, frontal, values in rows:
                w.writerow([f"{release}/{tail}", "Female", 60, "Frontal" if frontal else "Lateral",
                            "PA" if frontal else "", *[values.get(o, "") for o in OBSERVATIONS]])
                img = root / tail
                img.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, size[::-1], dtype=np.uint8)).save(img, quality=95)
    return root


@pytest.mark.parametrize("release", ["CheXpert-v1.0-small", "CheXpert-v1.0"])
@pytest.mark.parametrize("give_parent", [False, True])
def test_both_layouts_resolve_paths_and_patients(tmp_path, release, give_parent):
    root = make_chexpert(tmp_path, release)
    ds = CheXpert(tmp_path if give_parent else root, split="train", image_size=16)
    assert len(ds) == 3  # the lateral view is filtered out
    assert ds.patients == ["patient00001", "patient00002", "patient00003"]
    assert ds.info.class_names == ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
    item = ds[2]
    assert item["image"].shape == (1, 16, 16)
    assert item["id"] == f"{release}/train/patient00003/study2/view1_frontal.jpg"
    assert ds.records[2].image == root / "train/patient00003/study2/view1_frontal.jpg"
    valid = CheXpert(root, split="valid", image_size=16)
    assert valid.patients == ["patient64541"] and valid.labels.tolist() == [[0, 1, 0, 0, 1]]


def test_frontal_filter_off_keeps_lateral(tmp_path):
    ds = CheXpert(make_chexpert(tmp_path), frontal_only=False, image_size=8)
    assert len(ds) == 4 and ds.labels[1].tolist() == [1, 1, 0, 0, 0]


@pytest.mark.parametrize("policy,value", [("U-Ones", 1.0), ("U-Zeros", 0.0), ("keep", -1.0)])
def test_fixed_policies(tmp_path, policy, value):
    ds = CheXpert(make_chexpert(tmp_path), uncertainty=policy, image_size=8)
    expect = np.where(RAW == -1, value, RAW)
    np.testing.assert_array_equal(ds.labels, expect)
    np.testing.assert_array_equal(ds[0]["label"].numpy(), expect[0])


def test_u_ignore_gives_nan_only_where_uncertain(tmp_path):
    ds = CheXpert(make_chexpert(tmp_path), uncertainty="U-Ignore", image_size=8)
    np.testing.assert_array_equal(np.isnan(ds.labels), RAW == -1)
    np.testing.assert_array_equal(ds.labels[RAW != -1], RAW[RAW != -1])


@pytest.mark.parametrize("policy,lo,hi", [("U-Ones-LSR", 0.55, 0.85), ("U-Zeros-LSR", 0.0, 0.3)])
def test_lsr_policies_draw_in_range_deterministically(tmp_path, policy, lo, hi):
    root = make_chexpert(tmp_path)
    a = CheXpert(root, uncertainty=policy, seed=3, image_size=8).labels
    b = CheXpert(root, uncertainty=policy, seed=3, image_size=8).labels
    c = CheXpert(root, uncertainty=policy, seed=4, image_size=8).labels
    unc = RAW == -1
    np.testing.assert_array_equal(a, b)
    assert np.all((a[unc] >= lo) & (a[unc] <= hi)) and len(np.unique(a[unc])) == unc.sum()
    assert not np.array_equal(a[unc], c[unc])
    np.testing.assert_array_equal(a[~unc], RAW[~unc])
    # the draw is numpy's default_rng(seed).uniform over the full (rows, labels) table
    ref = np.random.default_rng(3).uniform(lo, hi, size=RAW.shape).astype(np.float32)
    np.testing.assert_array_equal(a[unc], ref[unc])
    custom = CheXpert(root, uncertainty=policy, lsr_range=(0.6, 0.61), image_size=8).labels
    assert np.all((custom[unc] >= 0.6) & (custom[unc] <= 0.61))


def test_label_subset_and_blank_ignore(tmp_path):
    root = make_chexpert(tmp_path)
    ds = CheXpert(root, labels=("Edema", "No Finding"), blank="ignore", uncertainty="U-Zeros", image_size=8)
    assert ds.info.class_names == ("Edema", "No Finding")
    np.testing.assert_array_equal(ds.labels[:, 0], [0, 0, 1])
    assert np.isnan(ds.labels[:, 1]).all()


def test_unknown_policy_and_observation(tmp_path):
    root = make_chexpert(tmp_path)
    with pytest.raises(ConfigError, match="uncertainty"):
        CheXpert(root, uncertainty="U-Maybe")
    with pytest.raises(ConfigError, match="'Heart'"):
        CheXpert(root, labels=("Heart",))


def test_unknown_label_value_names_file_line_column(tmp_path):
    rows = [TRAIN[0], ("train/patient00009/study1/view1_frontal.jpg", True, {"Edema": "2.0"})]
    root = make_chexpert(tmp_path, train=rows)
    with pytest.raises(DataError, match=r"train\.csv line 3, column 'Edema': unknown label value '2.0'"):
        CheXpert(root)


def test_patient_in_train_and_valid_is_an_error(tmp_path):
    valid = [("valid/patient00002/study9/view1_frontal.jpg", True, {})]
    root = make_chexpert(tmp_path, valid=valid)
    with pytest.raises(DataError, match="patient 'patient00002'.*'train.csv'.*'valid.csv'"):
        CheXpert(root, split="train")


def test_registry_folds_and_test_split(tmp_path):
    root = make_chexpert(tmp_path)
    test = build_dataset("chexpert", root=root, split="test", fold=0, image_size=8)
    assert test.patients == ["patient64541"]  # no test.csv: the held-out valid.csv
    train = build_dataset("chexpert", root=root, split="train", fold=0, folds=3, image_size=8)
    val = build_dataset("chexpert", root=root, split="val", fold=0, folds=3, image_size=8)
    assert len(train) == 2 and len(val) == 1 and not set(train.patients) & set(val.patients)
