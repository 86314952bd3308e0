"""The functional SIBNet loss terms against brute-force references written independently here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.filters import threshold_otsu
from skimage.measure import label as sk_label

from sibnet.errors import ConfigError
from sibnet.losses.clusters import clusters
from sibnet.losses.coherence import spatial_coherence
from sibnet.losses.distinctiveness import class_distinctiveness
from sibnet.losses.normalise import normalise_maps


# ---------------------------------------------------------------- normalisation
def test_normalise_maps_relu_then_max():
    maps = torch.tensor([[[[-1.0, 2.0], [4.0, 0.5]], [[-3.0, -1.0], [-2.0, -0.5]]]])
    out = normalise_maps(maps)
    np.testing.assert_allclose(out[0, 0].numpy(), np.array([[0, 2], [4, 0.5]]) / (4 + 1e-8), rtol=1e-7)
    assert torch.equal(out[0, 1], torch.zeros(2, 2))
    maps64 = torch.randn(3, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    assert normalise_maps(maps64).dtype == torch.float64
    assert torch.autograd.gradcheck(normalise_maps, (maps64,))
    with pytest.raises(ConfigError, match="eps"):
        normalise_maps(maps, eps=0)


# ---------------------------------------------------------------- class distinctiveness
def brute_cd(z: np.ndarray) -> np.ndarray:
    b, k, _ = z.shape
    out = np.zeros(b)
    for i in range(b):
        sims = []
        for c1 in range(k - 1):
            for c2 in range(c1 + 1, k):
                u, v = z[i, c1], z[i, c2]
                sims.append(float(u @ v) / (math.sqrt(u @ u) * math.sqrt(v @ v)))
        out[i] = np.mean(sims) if sims else 0.0
    return out


class CountingEmbed:
    """A fixed small nonlinear encoder (N, H, W) -> (N, D) that counts its calls."""

    def __init__(self, h, w, d=6, dtype=torch.float64, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(h * w, d, generator=g, dtype=dtype)
        self.calls = 0

    def __call__(self, stack):
        self.calls += 1
        assert stack.ndim == 3
        return torch.tanh(stack.reshape(stack.shape[0], -1) @ self.weight) + stack.mean(dim=(1, 2))[:, None]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [2, 3, 5])
def test_distinctiveness_equals_pair_loop(k, dtype):
    torch.manual_seed(k)
    maps = torch.rand(4, k, 6, 5, dtype=dtype)
    embed = CountingEmbed(6, 5, dtype=dtype)
    per_image = class_distinctiveness(maps, embed, reduction="none")
    assert embed.calls == 1 and per_image.shape == (4,) and per_image.dtype == dtype
    z = embed(maps.reshape(-1, 6, 5)).reshape(4, k, -1).double().numpy()
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    np.testing.assert_allclose(per_image.double().numpy(), brute_cd(z), rtol=tol, atol=tol)
    mean = class_distinctiveness(maps, torch.from_numpy(z).to(dtype))
    assert mean.ndim == 0
    assert abs(mean.item() - brute_cd(z).mean()) < tol
    assert abs(class_distinctiveness(maps, torch.from_numpy(z), reduction="sum").item() - brute_cd(z).sum()) < 1e-9


def test_distinctiveness_is_plain_cosine_not_absolute():
    z = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]], [[1.0, 1.0], [2.0, 2.0]]])
    np.testing.assert_allclose(class_distinctiveness(torch.zeros(2, 2, 3, 3), z, "none").numpy(), [-1.0, 1.0],
                               atol=1e-6)


def test_distinctiveness_degenerate_inputs_are_finite():
    # K = 1: no pair, value 0 and zero gradient
    maps = torch.rand(3, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    value = class_distinctiveness(maps, CountingEmbed(4, 4))
    value.backward()
    assert value.item() == 0.0 and torch.equal(maps.grad, torch.zeros_like(maps))
    # all-zero maps: normalisation keeps them zero; a bias-free linear encoder gives zero vectors,
    # whose cosine is 0 by the eps convention; value and gradient finite
    weight = torch.randn(16, 5, dtype=torch.float64)
    for fill in (0.0, -2.0, 0.7):
        maps = torch.full((2, 3, 4, 4), fill, dtype=torch.float64, requires_grad=True)
        value = class_distinctiveness(normalise_maps(maps), lambda s: s.reshape(s.shape[0], -1) @ weight)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(maps.grad).all()
        # constant maps embed identically: similarity 1; zero maps: 0
        assert value.item() == pytest.approx(0.0 if fill <= 0 else 1.0, abs=1e-9)


def test_distinctiveness_gradcheck():
    maps = torch.rand(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    embed = CountingEmbed(4, 5)
    assert torch.autograd.gradcheck(lambda m: class_distinctiveness(m, embed, "none"), (maps,))
    assert torch.autograd.gradcheck(lambda m: class_distinctiveness(normalise_maps(m), embed), (maps,))


def test_distinctiveness_rejects_bad_embeddings():
    maps = torch.rand(2, 3, 4, 4)
    with pytest.raises(ConfigError, match="embed"):
        class_distinctiveness(maps, torch.rand(2, 4, 7))
    with pytest.raises(ConfigError, match="embed"):
        class_distinctiveness(maps, lambda s: s[:1].reshape(1, -1))
    with pytest.raises(ConfigError, match="embed"):
        class_distinctiveness(maps, "encoder")
    with pytest.raises(ConfigError, match="reduction"):
        class_distinctiveness(maps, torch.rand(2, 3, 7), reduction="max")


# ---------------------------------------------------------------- spatial coherence
def reference_labels(m: np.ndarray, threshold, background_cluster: bool) -> np.ndarray:
    t = threshold_otsu(m) if threshold == "otsu" else (m.mean() if threshold == "mean" else threshold)
    lab = sk_label(m > t, connectivity=2, background=0)
    if background_cluster:
        lab[lab == 0] = lab.max() + 1
    return lab


def brute_sc(m: np.ndarray, lab: np.ndarray, r: int, pair_mean: bool = False) -> float:
    h, w = m.shape
    total, pairs = 0.0, 0
    for y in range(h):
        for x in range(w):
            if lab[y, x] == 0:
                continue
            for qy in range(max(0, y - r), min(h, y + r + 1)):
                for qx in range(max(0, x - r), min(w, x + r + 1)):
                    if (qy, qx) != (y, x) and lab[qy, qx] == lab[y, x]:
                        total += (float(m[y, x]) - float(m[qy, qx])) ** 2
                        pairs += 1
    return total / max(pairs, 1) if pair_mean else total


def cluster_maps(dtype=np.float64) -> np.ndarray:
    """(2, 3, 12, 14) maps: noisy low background and bright clusters of varied values."""
    rng = np.random.default_rng(7)
    maps = rng.random((2, 3, 12, 14)) * 0.15
    bright = lambda *shape: 0.6 + 0.4 * rng.random(shape)  # noqa: E731
    m = maps[0, 0]  # two clusters one pixel apart (share windows), a one-pixel cluster
    m[2:5, 2:5] = bright(3, 3)
    m[2:6, 6:9] = bright(4, 3)
    m[9, 11] = 0.9
    m = maps[0, 1]  # clusters on the borders and corners, one diagonal (8-connected) chain
    m[0:3, 0:4] = bright(3, 4)
    m[8:12, 12:14] = bright(4, 2)
    m[5, 5], m[6, 6], m[7, 7] = 0.8, 0.95, 0.7
    m[0, 9:14] = bright(5)
    maps[0, 2] = 0.3  # nothing above threshold
    m = maps[1, 0]  # many small clusters
    for y in range(0, 12, 3):
        for x in range((y // 3) % 2, 14, 3):
            m[y, x:x + 2] = bright(min(2, 14 - x))
    maps[1, 1] = rng.random((12, 14))  # plain noise: many irregular clusters
    m = maps[1, 2]  # one large cluster touching every border
    m[:, :] = bright(12, 14)
    m[4:8, 5:9] = 0.05
    return maps.astype(dtype)


@pytest.mark.parametrize("radius", [1, 4, 7])
@pytest.mark.parametrize("background_cluster", [False, True])
@pytest.mark.parametrize("threshold", ["otsu", "mean"])
def test_coherence_equals_brute_force(radius, background_cluster, threshold):
    maps = cluster_maps()
    got = spatial_coherence(torch.from_numpy(maps), radius=radius, threshold=threshold,
                            background_cluster=background_cluster, reduction="none")
    assert got.shape == (2, 3)
    ref = np.array([[brute_sc(maps[b, k], reference_labels(maps[b, k], threshold, background_cluster), radius)
                     for k in range(3)] for b in range(2)])
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12, atol=1e-12)
    if not background_cluster:
        assert ref[0, 2] == 0.0  # no cluster
    assert (ref[[0, 0, 1, 1, 1], [0, 1, 0, 1, 2]] > 0).all()
    mean = spatial_coherence(torch.from_numpy(maps), radius=radius, threshold=threshold,
                             background_cluster=background_cluster)
    assert mean.item() == pytest.approx(ref.mean(), rel=1e-12)


@pytest.mark.parametrize("radius", [1, 4])
@pytest.mark.parametrize("background_cluster", [False, True])
def test_coherence_pair_mean_equals_brute_force(radius, background_cluster):
    maps = cluster_maps()
    got = spatial_coherence(torch.from_numpy(maps), radius=radius, background_cluster=background_cluster,
                            reduction="none", scale="pair_mean")
    ref = np.array([[brute_sc(maps[b, k], reference_labels(maps[b, k], "otsu", background_cluster), radius,
                              pair_mean=True) for k in range(3)] for b in range(2)])
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12, atol=1e-12)
    assert (got >= 0).all() and (got <= 1).all()  # maps in [0, 1]: a mean squared difference
    if not background_cluster:
        assert got[0, 2].item() == 0.0  # no cluster, no pair: 0, not NaN
    with pytest.raises(ConfigError, match="scale"):
        spatial_coherence(torch.from_numpy(maps), scale="mean")


def test_coherence_float32_and_fixed_threshold():
    maps = cluster_maps(np.float32)
    got = spatial_coherence(torch.from_numpy(maps), radius=3, threshold=0.5, reduction="none")
    assert got.dtype == torch.float32
    ref = [[brute_sc(maps[b, k], reference_labels(maps[b, k], 0.5, False), 3) for k in range(3)] for b in range(2)]
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5)


def test_coherence_counts_only_same_cluster_pairs():
    # two flat clusters of different heights, one pixel apart: same-cluster differences are 0
    m = np.zeros((5, 9))
    m[1:4, 1:4] = 0.5
    m[1:4, 5:8] = 1.0
    maps = torch.from_numpy(m)[None, None]
    assert spatial_coherence(maps, radius=4).item() == 0.0
    # one pixel changed: 2 * (number of same-cluster window neighbours) * diff^2
    m[2, 2] = 0.7
    maps = torch.from_numpy(m)[None, None]
    labels = clusters(maps, threshold=0.2)
    value = spatial_coherence(maps, radius=4, labels=labels).item()
    assert value == pytest.approx(2 * 8 * 0.2**2)


def test_coherence_gradcheck_with_fixed_labels():
    maps = torch.from_numpy(cluster_maps()[:, :, :7, :8]).requires_grad_(True)
    labels = clusters(maps, background_cluster=False)
    for radius in (1, 3, 7):  # 7: offsets beyond the 7x8 map are skipped
        assert torch.autograd.gradcheck(lambda m: spatial_coherence(m, radius=radius, labels=labels, reduction="none"),
                                        (maps,))
        assert torch.autograd.gradcheck(lambda m: spatial_coherence(m, radius=radius, labels=labels, reduction="none",
                                                                    scale="pair_mean"), (maps,))
    assert torch.autograd.gradcheck(lambda m: spatial_coherence(normalise_maps(m), radius=2, labels=labels),
                                    (maps,))


def test_coherence_rejects_bad_arguments():
    maps = torch.rand(1, 2, 6, 6)
    for radius in (0, 8, 2.0, True):
        with pytest.raises(ConfigError, match="radius"):
            spatial_coherence(maps, radius=radius)
    with pytest.raises(ConfigError, match="labels"):
        spatial_coherence(maps, labels=torch.zeros(1, 2, 6, 5, dtype=torch.long))
    with pytest.raises(ConfigError, match="labels"):
        spatial_coherence(maps, labels=torch.zeros(1, 2, 6, 6))
    with pytest.raises(ConfigError, match="reduction"):
        spatial_coherence(maps, reduction="avg")
    with pytest.raises(ConfigError, match="maps"):
        spatial_coherence(torch.rand(6, 6))


def test_coherence_tiny_maps_and_windows_larger_than_the_map():
    maps = torch.tensor([[[[0.9, 0.8], [0.1, 0.85]]]], dtype=torch.float64)
    lab = torch.tensor([[[[1, 1], [0, 1]]]])
    ref = 2 * ((0.9 - 0.8) ** 2 + (0.9 - 0.85) ** 2 + (0.8 - 0.85) ** 2)
    for r in range(1, 8):
        assert spatial_coherence(maps, radius=r, labels=lab).item() == pytest.approx(ref)


# ---------------------------------------------------------------- classification term
from sibnet.errors import DataError  # noqa: E402
from sibnet.losses.classification import class_weights_from_labels, weighted_bce, weighted_ce  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weighted_bce_equals_torch(dtype):
    torch.manual_seed(0)
    logits = torch.randn(6, 4, dtype=dtype)
    targets = (torch.rand(6, 4) > 0.6).to(dtype)
    pw = torch.tensor([0.5, 2.0, 3.0, 1.0], dtype=dtype)
    torch_loss = torch.nn.BCEWithLogitsLoss(pos_weight=pw)
    assert torch.allclose(weighted_bce(logits, targets, pw), torch_loss(logits, targets), rtol=1e-6)
    assert torch.allclose(weighted_bce(logits, targets, pw, "none"),
                          F_bce(logits, targets, pw, "none"), rtol=1e-6)
    assert torch.allclose(weighted_bce(logits, targets), F_bce(logits, targets, None, "mean"), rtol=1e-6)


def F_bce(logits, targets, pw, reduction):
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, pos_weight=pw, reduction=reduction)


def test_weighted_bce_masks_nan_targets():
    torch.manual_seed(1)
    logits = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([[1, 0, float("nan")], [0, 0, 1], [float("nan")] * 3, [1, 1, 0], [0, float("nan"), 1]],
                           dtype=torch.float64)
    pw = torch.tensor([2.0, 0.5, 4.0], dtype=torch.float64)
    value = weighted_bce(logits, targets, pw)
    value.backward()
    mask = ~torch.isnan(targets)
    # hand reference: -(pw*y*log(sigmoid(x)) + (1-y)*log(1-sigmoid(x))) over the observed entries
    x, y = logits.detach()[mask], targets[mask]
    w = pw.expand(5, 3)[mask]
    ref = -(w * y * torch.log(torch.sigmoid(x)) + (1 - y) * torch.log(1 - torch.sigmoid(x))).mean()
    assert value.item() == pytest.approx(ref.item(), rel=1e-12)
    assert torch.isfinite(logits.grad).all() and (logits.grad[~mask] == 0).all() and (logits.grad[mask] != 0).all()
    none = weighted_bce(logits, targets, pw, "none")
    assert ((none[~mask] == 0).all()
            and none.sum().item() == pytest.approx(weighted_bce(logits, targets, pw, "sum").item()))
    all_nan = torch.full((2, 3), float("nan"))
    assert weighted_bce(torch.zeros(2, 3), all_nan).item() == 0.0


def test_weighted_bce_rejects_uncertain_and_bad_targets():
    with pytest.raises(DataError, match="-1"):
        weighted_bce(torch.zeros(2, 2), torch.tensor([[1.0, -1.0], [0.0, 0.0]]))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        weighted_bce(torch.zeros(1, 2), torch.tensor([[2.0, 0.0]]))
    with pytest.raises(ConfigError, match="targets"):
        weighted_bce(torch.zeros(2, 2), torch.zeros(2, 3))
    with pytest.raises(ConfigError, match="pos_weight"):
        weighted_bce(torch.zeros(2, 2), torch.zeros(2, 2), pos_weight=[1.0, 2.0, 3.0])


def test_weighted_ce_equals_torch_with_indices_and_one_hot():
    torch.manual_seed(2)
    logits = torch.randn(7, 3, dtype=torch.float64)
    index = torch.tensor([0, 2, 1, 1, 2, 0, 2])
    w = torch.tensor([0.4, 1.5, 1.1], dtype=torch.float64)
    ref = torch.nn.CrossEntropyLoss(weight=w)(logits, index)
    assert weighted_ce(logits, index, w).item() == pytest.approx(ref.item(), rel=1e-12)
    one_hot = torch.nn.functional.one_hot(index, 3).double()
    assert weighted_ce(logits, one_hot, w).item() == pytest.approx(ref.item(), rel=1e-12)
    # hand value: sum_i w_{y_i} * (-log softmax_{y_i}) / sum_i w_{y_i}
    nll = -torch.log_softmax(logits, dim=1)[torch.arange(7), index]
    assert ref.item() == pytest.approx(((w[index] * nll).sum() / w[index].sum()).item(), rel=1e-12)
    # a nan row is ignored
    masked = one_hot.clone()
    masked[3] = float("nan")
    keep = torch.arange(7) != 3
    ref_masked = torch.nn.CrossEntropyLoss(weight=w)(logits[keep], index[keep])
    assert weighted_ce(logits, masked, w).item() == pytest.approx(ref_masked.item(), rel=1e-12)
    assert weighted_ce(logits, masked, w, "none")[3].item() == 0.0
    with pytest.raises(DataError, match="one-hot"):
        weighted_ce(logits, torch.full((7, 3), 0.5, dtype=torch.float64))
    with pytest.raises(DataError, match="indices"):
        weighted_ce(logits, torch.tensor([0, 1, 3, 0, 0, 0, 0]))


def test_class_weights_from_labels_multilabel():
    labels = np.array([[1, 0, 0, 1], [0, 0, np.nan, 1], [1, 0, 1, 1], [0, 0, 0, np.nan], [0, 0, 1, 1]])
    with pytest.warns(UserWarning) as record:
        w = class_weights_from_labels(torch.tensor(labels), "multilabel", ["A", "B", "C", "D"])
    # A: 2 pos 3 neg; B: no positive; C: 2 pos 2 neg (one nan); D: no negative
    np.testing.assert_allclose(w.numpy(), [1.5, 1.0, 1.0, 1.0])
    messages = " ".join(str(r.message) for r in record)
    assert "B: no positive" in messages and "D: no negative" in messages
    assert len(record) == 2  # A and C are balanced: no warning
    with pytest.raises(DataError, match="-1"):
        class_weights_from_labels(np.array([[1, -1]]), "multilabel")
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        class_weights_from_labels(np.array([[1, 2.0]]), "multilabel")
    # soft targets (U-LSR, label smoothing): fractional positives, 0.7 + 1 = 1.7 pos, 0.3 + 2 = 2.3 neg
    soft = class_weights_from_labels(np.array([[0.7], [1.0], [0.0], [0.0]]), "multilabel")
    np.testing.assert_allclose(soft.numpy(), [2.3 / 1.7], rtol=1e-6)
    with pytest.raises(ConfigError, match="task"):
        class_weights_from_labels(labels, "binary")


def test_class_weights_from_labels_multiclass():
    index = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2])  # counts 4, 2, 8
    inverse = np.array([1 / 4, 1 / 2, 1 / 8])
    expected = inverse / inverse.mean()
    np.testing.assert_allclose(class_weights_from_labels(index, "multiclass").numpy(), expected, rtol=1e-6)
    one_hot = np.eye(3)[index]
    one_hot = np.vstack([one_hot, [[np.nan] * 3]])
    w = class_weights_from_labels(one_hot, "multiclass")
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-6)
    assert w.mean().item() == pytest.approx(1.0)
    with pytest.warns(UserWarning, match="never occurs"):
        w = class_weights_from_labels(np.array([0, 0, 2]), "multiclass", ["a", "b", "c"])
    np.testing.assert_allclose(w.numpy(), [2 / 3, 1.0, 4 / 3], rtol=1e-6)


def test_coherence_is_invariant_to_label_numbering():
    maps = torch.from_numpy(cluster_maps())
    labels = clusters(maps)
    permuted = torch.randperm(int(labels.max()) + 1)[labels] + 1  # relabel, keep 0 as "no cluster"
    permuted[labels == 0] = 0
    reused = labels.clone()  # the same numbers reused in every map
    for b in range(2):
        for k in range(3):
            lab = reused[b, k]
            reused[b, k] = torch.unique(lab, return_inverse=True)[1] if lab.min() == 0 else torch.unique(
                lab, return_inverse=True)[1] + 1
    ref = spatial_coherence(maps, labels=labels, reduction="none")
    assert torch.equal(spatial_coherence(maps, labels=permuted, reduction="none"), ref)
    assert torch.equal(spatial_coherence(maps, labels=reused.int(), reduction="none"), ref)
