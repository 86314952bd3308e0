"""The real-format loaders on ../shared/data (skipped with a reason when it is absent)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_dataset

from sibnet.data import GlaS, MedMNIST, NIHChestXray, available, build_dataset
from sibnet.errors import DataError

# the label counts of ../shared/data/README.md
NIH_COUNTS = {"Infiltration": 112, "Atelectasis": 85, "Nodule": 81, "Consolidation": 73, "Effusion": 72,
              "Pleural_Thickening": 60, "Mass": 55, "Cardiomegaly": 49, "Fibrosis": 43, "Pneumothorax": 39,
              "Emphysema": 35, "Pneumonia": 28, "Hernia": 18, "Edema": 15}


def test_nih_counts_match_readme():
    root = shared_dataset("nih-cxr14")
    ds = NIHChestXray(root, image_size=32)
    assert len(ds) == 546 and len(set(ds.patients)) == 546
    assert dict(zip(ds.info.class_names, ds.labels.sum(0).astype(int).tolist())) == NIH_COUNTS
    assert int((ds.labels.sum(1) == 0).sum()) == 89  # No Finding
    five = NIHChestXray(root, image_size=32, label_set="chexpert5")
    assert five.labels.sum(0).astype(int).tolist() == [85, 49, 73, 15, 72]
    item = ds[0]
    assert item["image"].shape == (1, 32, 32) and item["mask"].shape == (14, 32, 32)
    assert item["mask"].sum() == 0  # README: no box falls on these images
    assert ds.info.has_masks and len(ds.boxes) > 800
    with pytest.raises(DataError, match="split 'test' has no images"):
        NIHChestXray(root, split="test")


def test_nih_folds_over_the_training_pool():
    root = shared_dataset("nih-cxr14")
    vals = []
    for fold in range(5):
        tr = build_dataset("nih", root=root, split="train", fold=fold, seed=1)
        va = build_dataset("nih", root=root, split="val", fold=fold, seed=1)
        assert len(tr) + len(va) == 546 and len(va) in (109, 110)
        assert not set(tr.patients) & set(va.patients)
        vals += va.ids
    assert sorted(vals) == sorted(NIHChestXray(root).ids)


def test_glas_counts_grades_and_masks():
    root = shared_dataset("glas")
    train, test = GlaS(root, image_size=64), GlaS(root, split="testA", image_size=64, instances=True)
    assert (len(train), len(test)) == (85, 60)
    assert train.labels.sum(0).tolist() == [37, 48] and test.labels.sum(0).tolist() == [33, 27]
    assert train.info.task == "multiclass" and train.info.in_channels == 3
    assert len(set(train.patients)) == 15
    item = test[0]
    assert item["image"].shape == (3, 64, 64) and item["mask"].shape == (1, 64, 64)
    assert item["instances"].dtype.is_floating_point is False and int(item["instances"].max()) >= 1
    np.testing.assert_array_equal((item["instances"] > 0).float().numpy(), item["mask"][0].numpy())
    assert len(GlaS(root, split="test", image_size=8)) == 60


def test_pneumoniamnist_counts():
    root = shared_dataset("pneumoniamnist")
    sizes = {s: len(MedMNIST(root, split=s, image_size=28)) for s in ("train", "val", "test")}
    assert sizes == {"train": 3882, "val": 524, "test": 624}
    test = MedMNIST(root, split="test", image_size=28)
    assert test.info.task == "multiclass" and test.info.class_names == ("normal", "pneumonia")
    assert test.labels.sum(0).tolist() == [234, 390]  # official test split
    assert test[0]["image"].shape == (1, 28, 28)


def test_registry_names():
    names = available()
    for n in ("chexpert", "nih", "glas", "medmnist", "csv"):
        assert n in names
    ds = build_dataset("medmnist", root=shared_dataset("pneumoniamnist"), split="val", image_size=28)
    assert len(ds) == 524 and len(ds.patients) == 524
