"""Cluster labelling and Otsu thresholds against scikit-image / scipy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.filters import threshold_otsu
from skimage.measure import label as sk_label

from sibnet.errors import ConfigError
from sibnet.losses.clusters import clusters, otsu_threshold, scipy_components, thresholds, torch_components


def random_map(rng: np.random.Generator, h: int, w: int, kind: int) -> np.ndarray:
    if kind == 0:
        return rng.random((h, w))
    if kind == 1:
        return rng.normal(size=(h, w)) ** 3
    if kind == 2:
        return rng.integers(0, 4, (h, w)).astype(float)
    if kind == 3:
        return np.full((h, w), rng.normal())
    if kind == 4:
        return rng.exponential(size=(h, w)) * 1e-3
    m = rng.random((h, w)) * 0.1  # blobs on a noisy background
    for _ in range(rng.integers(1, 6)):
        y, x = rng.integers(0, h), rng.integers(0, w)
        m[max(0, y - 2):y + 2, max(0, x - 3):x + 1] += 0.8
    return m


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two label images have the same zero set and a one-to-one label correspondence."""
    if not np.array_equal(a == 0, b == 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_otsu_equals_skimage_on_many_maps(dtype):
    rng = np.random.default_rng(1)
    for trial in range(240):
        h, w = rng.integers(1, 30, 2)
        m = random_map(rng, h, w, trial % 6).astype(dtype)
        got = otsu_threshold(torch.from_numpy(m)[None, None])
        assert got.dtype == torch.from_numpy(m).dtype
        assert got.item() == threshold_otsu(m), (trial, h, w)


def test_otsu_is_batched_and_constant_maps_have_no_foreground():
    rng = np.random.default_rng(2)
    maps = rng.random((3, 4, 9, 11)).astype(np.float32)
    maps[1, 2] = 0.25
    maps[2, 0] = 0.0
    t = otsu_threshold(torch.from_numpy(maps))
    expected = np.array([[threshold_otsu(maps[b, k]) for k in range(4)] for b in range(3)])
    np.testing.assert_array_equal(t.numpy(), expected)
    assert t[1, 2] == 0.25 and t[2, 0] == 0.0
    labels = clusters(torch.from_numpy(maps))
    assert not labels[1, 2].any() and not labels[2, 0].any()


def test_threshold_methods():
    maps = torch.rand(2, 3, 5, 6)
    assert torch.equal(thresholds(maps, "mean"), maps.mean(dim=(-2, -1)))
    assert torch.equal(thresholds(maps, 0.3), torch.full((2, 3), 0.3))
    for bad in ("median", None, float("nan"), True):
        with pytest.raises(ConfigError, match="threshold"):
            thresholds(maps, bad)


def reference_labels(m: np.ndarray, threshold, connectivity: int) -> np.ndarray:
    if threshold == "otsu":
        t = threshold_otsu(m)
    elif threshold == "mean":
        t = m.mean()
    else:
        t = threshold
    return sk_label(m > t, connectivity=1 if connectivity == 4 else 2, background=0)


@pytest.mark.parametrize("threshold", ["otsu", "mean", 0.5])
@pytest.mark.parametrize("connectivity", [8, 4])
def test_clusters_match_skimage_per_map(threshold, connectivity):
    rng = np.random.default_rng(3)
    maps = np.stack([np.stack([random_map(rng, 13, 17, (b * 3 + k) % 6) for k in range(3)]) for b in range(4)])
    for method in ("scipy", "torch"):
        labels = clusters(torch.from_numpy(maps), threshold=threshold, connectivity=connectivity, method=method)
        assert labels.dtype == torch.long and labels.shape == maps.shape
        lab = labels.numpy()
        seen = set()
        for b in range(4):
            for k in range(3):
                ref = reference_labels(maps[b, k], threshold, connectivity)
                assert same_partition(lab[b, k], ref), (method, b, k)
                own = set(np.unique(lab[b, k])) - {0}
                assert not own & seen  # a label never appears in two maps
                seen |= own
        assert seen == set(range(1, len(seen) + 1))  # numbered 1..n


@pytest.mark.parametrize("size", [(1, 1), (5, 64), (32, 32), (48, 40), (64, 64)])
def test_scipy_and_torch_components_agree(size):
    rng = np.random.default_rng(sum(size))
    h, w = size
    for density in (0.3, 0.55, 0.75):
        fg = torch.from_numpy(rng.random((6, h, w)) < density)
        for connectivity in (8, 4):
            a = scipy_components(fg, connectivity).numpy()
            b = torch_components(fg, connectivity).numpy()
            for i in range(fg.shape[0]):
                assert same_partition(a[i], b[i]), (size, density, connectivity, i)


def test_torch_components_long_snake():
    # a one-pixel-wide serpentine needs many propagation rounds: the result must still be one component
    fg = np.zeros((31, 31), dtype=bool)
    fg[::2] = True
    for i, row in enumerate(range(1, 31, 2)):
        fg[row, 30 if i % 2 == 0 else 0] = True
    lab = torch_components(torch.from_numpy(fg)[None], 4).numpy()[0]
    assert np.unique(lab[fg]).tolist() == [1] and not lab[~fg].any()


def test_background_cluster_is_one_label_per_map():
    rng = np.random.default_rng(4)
    maps = torch.from_numpy(np.stack([[random_map(rng, 10, 12, 5), random_map(rng, 10, 12, 3)]]))
    off = clusters(maps)
    for method in ("scipy", "torch"):
        on = clusters(maps, background_cluster=True, method=method)
        for k in range(2):
            assert (on[0, k] > 0).all()
            bg = off[0, k] == 0
            assert torch.unique(on[0, k][bg]).numel() == (1 if bg.any() else 0)
            assert same_partition(on[0, k].numpy() * (~bg).numpy(), off[0, k].numpy())
        assert set(torch.unique(on[0, 0]).tolist()).isdisjoint(torch.unique(on[0, 1]).tolist())


def test_clusters_ignore_gradients_and_reject_bad_input():
    maps = torch.rand(1, 2, 6, 6, requires_grad=True)
    assert not clusters(maps).requires_grad
    with pytest.raises(ConfigError, match="maps"):
        clusters(torch.rand(2, 6, 6))
    with pytest.raises(ConfigError, match="connectivity"):
        clusters(torch.rand(1, 1, 6, 6), connectivity=6)
    with pytest.raises(ConfigError, match="method"):
        clusters(torch.rand(1, 1, 6, 6), method="gpu")
    with pytest.raises(ConfigError, match="NaN"):
        clusters(torch.full((1, 1, 3, 3), float("nan")))


def test_torch_components_spiral_8_connected():
    # a square spiral of width 1 whose turns touch only diagonally at one place
    n = 25
    fg = np.zeros((n, n), dtype=bool)
    top, left, bottom, right = 0, 0, n - 1, n - 1
    while top <= bottom and left <= right:
        fg[top, left:right + 1] = True
        fg[top:bottom + 1, right] = True
        fg[bottom, left:right + 1] = True
        fg[top + 2:bottom + 1, left] = True
        top, left, bottom, right = top + 2, left + 2, bottom - 2, right - 2
    for connectivity in (8, 4):
        a = scipy_components(torch.from_numpy(fg)[None], connectivity).numpy()[0]
        b = torch_components(torch.from_numpy(fg)[None], connectivity).numpy()[0]
        assert same_partition(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_path_matches_cpu():
    rng = np.random.default_rng(5)
    for size in (16, 64, 128):
        maps = torch.nn.functional.avg_pool2d(torch.from_numpy(rng.random((4, 5, size, size))).float(), 5, 1, 2)
        cpu = clusters(maps).numpy()
        gpu = clusters(maps.cuda())
        assert gpu.device.type == "cuda"
        np.testing.assert_array_equal(otsu_threshold(maps.cuda()).cpu().numpy(), otsu_threshold(maps).numpy())
        gpu = gpu.cpu().numpy()
        for b in range(4):
            for k in range(5):
                assert same_partition(cpu[b, k], gpu[b, k])
