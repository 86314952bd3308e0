"""The preprocessed cache: identical items, never inside the dataset folder, rebuilt when a file changes."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from sibnet.data import CachedDataset, CSVDataset, build_dataset
from sibnet.errors import ConfigError


def _folder(tmp_path, n=6):
    root = tmp_path / "ds"
    root.mkdir()
    rng = np.random.default_rng(0)
    lines = ["path,mask,a,b"]
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (30, 40), dtype=np.uint8)).save(root / f"{i}.png")
        Image.fromarray((rng.random((30, 40)) > 0.7).astype(np.uint8) * (i + 1)).save(root / f"{i}_m.png")
        lines.append(f"{i}.png,{i}_m.png,{i % 2},{(i + 1) % 2}")
    (root / "list.csv").write_text("\n".join(lines) + "\n")
    return root


def _snapshot(root):
    return sorted((p.name, p.stat().st_mtime_ns) for p in root.rglob("*"))


def _equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


def test_cached_items_equal_uncached_and_nothing_written_in_root(tmp_path):
    root = _folder(tmp_path)
    before = _snapshot(root)
    ds = CSVDataset(root / "list.csv", image_size=(20, 24), mask_mode="class", instances=True)
    cached = CachedDataset(ds, tmp_path / "cache")
    assert cached.built and cached.path.parent == (tmp_path / "cache").resolve()
    first = [cached[i] for i in range(len(ds))]
    again = CachedDataset(ds, tmp_path / "cache")
    assert not again.built and again.path == cached.path
    for i in range(len(ds)):
        _equal(ds[i], first[i])
        _equal(first[i], again[i])
    assert _snapshot(root) == before
    assert np.load(cached.path / "image.npy", mmap_mode="r").dtype == np.uint8
    assert not list((tmp_path / "cache").glob(".*tmp*"))


def test_cache_dir_inside_dataset_is_refused(tmp_path):
    root = _folder(tmp_path, n=2)
    ds = CSVDataset(root / "list.csv", image_size=8)
    with pytest.raises(ConfigError, match="inside the dataset folder"):
        CachedDataset(ds, root / "cache")
    assert not (root / "cache").exists()


def test_default_cache_dir_from_environment(tmp_path, monkeypatch):
    root = _folder(tmp_path, n=2)
    monkeypatch.setenv("SIBNET_CACHE", str(tmp_path / "envcache"))
    cached = build_dataset("csv", root=root / "list.csv", image_size=8, cached=True)
    assert cached.path.parent == (tmp_path / "envcache").resolve()
    assert len(cached) == 2 and cached.info.name == "csv" and cached.patients == ["0.png", "1.png"]


def test_changed_file_gives_a_new_cache(tmp_path):
    root = _folder(tmp_path, n=2)
    ds = CSVDataset(root / "list.csv", image_size=8)
    a = CachedDataset(ds, tmp_path / "c")
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(root / "1.png")
    os.utime(root / "1.png", ns=(1, 1))
    b = CachedDataset(CSVDataset(root / "list.csv", image_size=8), tmp_path / "c")
    assert a.path != b.path and b.built
    assert b[1]["image"].max() == 0


def test_cache_with_dataloader_workers_and_16_bit(tmp_path):
    root = tmp_path / "d16"
    root.mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        Image.fromarray(rng.integers(0, 65536, (20, 20), dtype=np.uint16)).save(root / f"{i}.png")
    (root / "l.csv").write_text("path,x\n" + "".join(f"{i}.png,{i % 2}\n" for i in range(4)))
    ds = CSVDataset(root / "l.csv", image_size=10)
    cached = CachedDataset(ds, tmp_path / "c", workers=2)
    assert np.load(cached.path / "image.npy", mmap_mode="r").dtype == np.float16
    batches = list(DataLoader(cached, batch_size=2, num_workers=2))
    images = torch.cat([b["image"] for b in batches])
    assert torch.equal(images, torch.stack([ds[i]["image"] for i in range(4)]))
