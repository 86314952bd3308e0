"""The dataset registry: names, options, folds, and the synthetic sets when they are installed."""

from __future__ import annotations

import importlib.util

import pytest

from sibnet.data import available, build_dataset
from sibnet.errors import ConfigError


def test_unknown_name_and_missing_root():
    with pytest.raises(ConfigError, match="unknown dataset 'imagenet'"):
        build_dataset("imagenet")
    with pytest.raises(ConfigError, match="dataset 'glas' needs root="):
        build_dataset("glas")
    with pytest.raises(ConfigError, match="split must be 'train', 'val' or 'test'"):
        build_dataset("nih", root=".", split="all", fold=0)


@pytest.mark.skipif(importlib.util.find_spec("sibnet.data.synthetic") is None, reason="synthetic module not present")
def test_synthetic_through_registry_with_folds():
    assert "synthetic" in available()
    tr = build_dataset("synthetic", split="train", image_size=32, n=20, fold=0, cache=False)
    va = build_dataset("synthetic", split="val", image_size=32, n=20, fold=0, cache=False)
    assert len(tr) + len(va) == 20 and len(va) == 4
    assert not set(tr.patients) & set(va.patients)
    assert tr.info.name == "synthetic" and tr[0]["image"].shape == (1, 32, 32)
    with pytest.raises(ConfigError):
        build_dataset("synthetic", image_size=32, n=4, colour="red")
