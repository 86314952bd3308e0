"""The embedded synthetic datasets: masks, labels, shortcut, determinism, cache, glands."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage, stats
from skimage.measure import regionprops

from sibnet.data.base import DatasetInfo
from sibnet.data.synth_chest import cardiothoracic_ratio
from sibnet.data.synthetic import (
    CLASS_NAMES,
    DEFAULT_PREVALENCE,
    SyntheticChestXray,
    draw_marker,
    marker_box,
    render_case,
)
from sibnet.data.synthetic_glands import SyntheticGlands, render_tile
from sibnet.errors import ConfigError

CARD = CLASS_NAMES.index("Cardiomegaly")


def test_class_names_are_the_chexpert_competition_findings():
    assert CLASS_NAMES == ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_mask_covers_exactly_where_the_finding_changed_the_image(name):
    k = CLASS_NAMES.index(name)
    others = {"Atelectasis": 1} if name == "Edema" else {"Edema": 1}
    for seed in range(4):
        with_img, with_masks = render_case(seed, 96, {**others, name: 1})
        without_img, without_masks = render_case(seed, 96, others)
        diff = np.abs(with_img - without_img)[0]
        mask = with_masks[k] > 0
        assert mask.any() and not without_masks[k].any()
        # the other findings are unchanged by adding this one (an enlarged heart hides lung behind it)
        other = [CLASS_NAMES.index(o) for o in others]
        np.testing.assert_array_equal(with_masks[other][:, ~mask], without_masks[other][:, ~mask])
        assert diff[mask].sum() / diff.sum() > 0.95
        assert diff[~mask].max() <= 0.06  # only the faint fringe below MASK_FRACTION
        assert diff[mask].mean() > 4 * diff[~mask].mean()
        if name != "Cardiomegaly":  # the enlarged heart contains the normal one, so only its rim changes
            assert (diff[mask] > 0).mean() > 0.8


def test_harder_cases_have_fainter_findings():
    def contrast(difficulty):
        a, m = render_case(3, 96, {"Consolidation": 1}, difficulty=difficulty)
        b, _ = render_case(3, 96, {}, difficulty=difficulty)
        return np.abs(a - b)[0][m[2] > 0].mean()

    assert contrast(0.0) > 1.8 * contrast(1.0) > 0


def test_uncertain_findings_are_drawn_fainter_with_the_same_mask():
    base, _ = render_case(4, 96, {})
    sure, sure_masks = render_case(4, 96, {"Pleural Effusion": 1})
    unsure, unsure_masks = render_case(4, 96, {"Pleural Effusion": -1})
    np.testing.assert_array_equal(sure_masks, unsure_masks)
    inside = sure_masks[4] > 0
    ratio = np.abs(unsure - base)[0][inside].mean() / np.abs(sure - base)[0][inside].mean()
    assert 0.4 < ratio < 0.8  # UNCERTAIN_STRENGTH = 0.6 through a mildly non-linear display map


@pytest.mark.parametrize("difficulty", [0.0, 0.5, 1.0])
def test_cardiothoracic_ratio_separates_cardiomegaly(difficulty):
    for seed in range(8):
        _, masks, parts = render_case(seed, 128, {"Cardiomegaly": 1}, difficulty=difficulty, return_parts=True)
        assert cardiothoracic_ratio(parts["heart"], parts["thorax"]) > 0.5
        assert (masks[CARD] > 0)[parts["heart"]].all()  # the mask is the heart
        _, masks, parts = render_case(seed, 128, {}, difficulty=difficulty, return_parts=True)
        assert cardiothoracic_ratio(parts["heart"], parts["thorax"]) < 0.5
        assert not masks.any()


def test_cardiothoracic_ratio_by_hand():
    heart = np.zeros((6, 10), bool)
    heart[2, 3:6] = heart[3, 4:8] = True  # spans columns 3..7: width 5
    thorax = np.zeros((6, 10), bool)
    thorax[1, 2:8] = thorax[4, 0:10] = True  # widest row 10
    assert cardiothoracic_ratio(heart, thorax) == pytest.approx(0.5)


def test_items_follow_the_dataset_interface():
    ds = SyntheticChestXray(split="val", size=64, n=6, cache=False)
    assert isinstance(ds.info, DatasetInfo)
    assert ds.info.class_names == CLASS_NAMES and ds.info.task == "multilabel"
    assert ds.info.in_channels == 1 and ds.info.has_masks and ds.info.num_classes == 5
    assert len(ds) == 6
    item = ds[5]
    assert item["image"].shape == (1, 64, 64) and item["image"].dtype == torch.float32
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["label"].shape == (5,) and item["label"].dtype == torch.float32
    assert item["mask"].shape == (5, 64, 64) and set(item["mask"].unique().tolist()) <= {0.0, 1.0}
    assert item["id"] == "synthetic-val-00005" and isinstance(item["patient"], str)
    assert ds[-1]["id"] == item["id"]
    with pytest.raises(IndexError):
        ds[6]


def test_labels_and_masks_agree_and_absent_findings_have_empty_masks():
    ds = SyntheticChestXray(split="train", size=48, n=150, seed=5, uncertain_rate=0.3, cache=False)
    seen = np.zeros(5, int)
    for i in range(len(ds)):
        item = ds[i]
        present = item["label"].numpy() != 0
        has_mask = item["mask"].flatten(1).amax(1).numpy() > 0
        np.testing.assert_array_equal(present, has_mask)
        seen += present
    assert (seen > 0).all()  # every finding occurs in this sample


def test_unlabeled_split_has_nan_labels_and_masks():
    ds = SyntheticChestXray(split="unlabeled", size=64, n=12, cache=False)
    assert np.isnan(ds.labels).all()
    masks = np.stack([ds[i]["mask"].numpy() for i in range(len(ds))])
    np.testing.assert_array_equal(masks.reshape(12, 5, -1).max(2) > 0, ds.findings != 0)
    assert torch.isnan(ds[0]["label"]).all()


def test_prevalence_cooccurrence_and_uncertain_labels():
    n = 3000
    ds = SyntheticChestXray(split="train", n=n, seed=1, cache=False, uncertain_rate=0.25)
    present = ds.findings != 0
    for k, name in enumerate(CLASS_NAMES):
        p = DEFAULT_PREVALENCE[name]
        assert abs(present[:, k].mean() - p) < 4 * np.sqrt(p * (1 - p) / n)
    e, c, f = (CLASS_NAMES.index(x) for x in ("Edema", "Cardiomegaly", "Pleural Effusion"))
    assert present[present[:, c], e].mean() > present[:, e].mean() + 0.15
    assert present[present[:, e], f].mean() > present[:, f].mean() + 0.15
    # uncertain only among positives, at the configured rate
    assert ((ds.labels == -1) <= present).all()
    rate = (ds.labels[present] == -1).mean()
    assert abs(rate - 0.25) < 4 * np.sqrt(0.25 * 0.75 / present.sum())
    assert not (SyntheticChestXray(split="train", n=200, cache=False).labels == -1).any()


def test_prevalence_dict_and_scale():
    n = 2000
    ds = SyntheticChestXray(n=n, cache=False, prevalence={"Edema": 0.6, "Atelectasis": 0.0})
    present = ds.findings != 0
    assert abs(present[:, 3].mean() - 0.6) < 4 * np.sqrt(0.24 / n)
    assert not present[:, 0].any()
    assert abs(present[:, 1].mean() - 0.25) < 4 * np.sqrt(0.1875 / n)
    scaled = SyntheticChestXray(n=n, cache=False, prevalence=2.0).findings != 0
    assert abs(scaled[:, 4].mean() - 0.7) < 4 * np.sqrt(0.21 / n)


@pytest.mark.parametrize("shortcut", ["Cardiomegaly", "Pleural Effusion"])
def test_shortcut_follows_finding_in_train_only(shortcut):
    k = CLASS_NAMES.index(shortcut)
    train = SyntheticChestXray(split="train", n=600, seed=2, shortcut=shortcut, shortcut_p=0.9, cache=False)
    y, m = train.findings[:, k] != 0, train.marker
    assert abs(m[y].mean() - 0.9) < 4 * np.sqrt(0.09 / y.sum())
    assert abs(m[~y].mean() - 0.1) < 4 * np.sqrt(0.09 / (~y).sum())
    test = SyntheticChestXray(split="test", n=600, seed=2, shortcut=shortcut, shortcut_p=0.9, cache=False)
    y, m = test.findings[:, k] != 0, test.marker
    table = np.array([[np.sum(y & m), np.sum(y & ~m)], [np.sum(~y & m), np.sum(~y & ~m)]])
    assert stats.chi2_contingency(table).pvalue > 0.01
    assert abs(m.mean() - DEFAULT_PREVALENCE[shortcut]) < 4 * np.sqrt(0.25 / 600)
    assert not SyntheticChestXray(split="train", n=50, cache=False).marker.any()


def test_marker_is_drawn_iff_flagged():
    ds = SyntheticChestXray(split="train", size=64, n=16, seed=3, shortcut="Edema", cache=False)
    r0, r1, c0, c1 = marker_box(64)
    glyph = draw_marker(np.zeros((64, 64), np.uint8))[r0:r1, c0:c1]
    assert ds.marker.any() and not ds.marker.all()
    for i in range(len(ds)):
        patch = np.round(ds[i]["image"][0, r0:r1, c0:c1].numpy() * 255).astype(np.uint8)
        assert np.array_equal(patch, glyph) == bool(ds.marker[i])
        assert ds[i]["mask"][:, r0:r1, c0:c1].sum() == 0 or not ds.marker[i]


def test_invalid_arguments_raise_config_errors_naming_them():
    with pytest.raises(ConfigError, match="Pneumonia"):
        SyntheticChestXray(shortcut="Pneumonia", cache=False)
    with pytest.raises(ConfigError, match="split"):
        SyntheticChestXray(split="training", cache=False)
    with pytest.raises(ConfigError, match="difficulty"):
        SyntheticChestXray(difficulty=1.5, cache=False)
    with pytest.raises(ConfigError, match="Nodule"):
        SyntheticChestXray(prevalence={"Nodule": 0.1}, cache=False)
    with pytest.raises(ConfigError, match="size"):
        SyntheticChestXray(size=8, cache=False)
    with pytest.raises(ConfigError, match="Nodule"):
        render_case(0, 64, {"Nodule": 1})
    with pytest.raises(ConfigError, match="split"):
        SyntheticGlands(split="unlabeled", cache=False)


def _arrays(ds):
    return [(ds[i]["image"].numpy(), ds[i]["mask"].numpy()) for i in range(len(ds))]


def test_same_seed_same_bytes_and_different_seed_differs():
    a = _arrays(SyntheticChestXray(split="test", size=64, n=5, seed=7, cache=False))
    b = _arrays(SyntheticChestXray(split="test", size=64, n=5, seed=7, cache=False))
    c = _arrays(SyntheticChestXray(split="test", size=64, n=5, seed=8, cache=False))
    for (ia, ma), (ib, mb) in zip(a, b):
        assert ia.tobytes() == ib.tobytes() and ma.tobytes() == mb.tobytes()
    assert all(ia.tobytes() != ic.tobytes() for (ia, _), (ic, _) in zip(a, c))
    # an image depends on its index alone, not on the split length
    longer = SyntheticChestXray(split="test", size=64, n=9, seed=7, cache=False)
    assert longer[4]["image"].numpy().tobytes() == a[4][0].tobytes()
    other_split = SyntheticChestXray(split="val", size=64, n=5, seed=7, cache=False)
    assert other_split[0]["image"].numpy().tobytes() != a[0][0].tobytes()


def test_cache_round_trip_is_identical_and_stays_under_root(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.setenv("SIBNET_CACHE", str(elsewhere))
    monkeypatch.setenv("HOME", str(elsewhere))
    root = tmp_path / "cache"
    kw = dict(split="train", size=64, n=8, seed=4, shortcut="Edema", uncertain_rate=0.2)
    first = SyntheticChestXray(root, **kw)
    folders = [p for p in root.iterdir()]
    assert len(folders) == 1 and (folders[0] / "done").exists()
    assert not any(p.name.startswith(folders[0].name + ".tmp") for p in root.iterdir())
    assert list(elsewhere.iterdir()) == []
    monkeypatch.setattr(SyntheticChestXray, "_build", lambda self: pytest.fail("cache was not reused"))
    second = SyntheticChestXray(root, **kw)
    fresh = SyntheticChestXray(None, **kw, cache=False)
    for i in range(8):
        for key in ("image", "mask", "label"):
            x, y, z = first[i][key].numpy(), second[i][key].numpy(), fresh[i][key].numpy()
            assert x.tobytes() == y.tobytes() == z.tobytes()
    # another knob gives another cache entry
    monkeypatch.undo()
    SyntheticChestXray(root, **{**kw, "difficulty": 0.9})
    assert len(list(root.iterdir())) == 2


def test_default_root_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SIBNET_CACHE", str(tmp_path))
    SyntheticGlands(split="val", size=32, n=2)
    assert len(list((tmp_path / "synthetic").iterdir())) == 1


@pytest.mark.parametrize("size", [64, 128, 200])
def test_any_size_works(size):
    img, masks = render_case(11, size, {"Pleural Effusion": 1, "Edema": 1})
    assert img.shape == (1, size, size) and masks.shape == (5, size, size)
    assert img.dtype == np.float32 and 0 <= img.min() and img.max() <= 1 and img.std() > 0.1
    assert masks[4].any() and masks[3].any() and not masks[[0, 1, 2]].any()
    item = SyntheticGlands(split="test", size=size, n=1, cache=False)[0]
    assert item["image"].shape == (3, size, size) and item["instances"].shape == (size, size)


def test_glands_items_and_instance_ids_agree_with_the_mask():
    ds = SyntheticGlands(split="train", size=96, n=10, seed=1, cache=False)
    assert ds.info.task == "multiclass" and ds.info.class_names == ("benign", "malignant")
    assert ds.info.in_channels == 3 and ds.info.has_masks
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (3, 96, 96) and item["image"].dtype == torch.float32
        assert item["label"].sum() == 1 and item["label"].argmax() == int(ds.grades[i])
        inst = item["instances"].numpy()
        assert item["instances"].dtype == torch.int64
        np.testing.assert_array_equal(item["mask"][0].numpy() > 0, inst > 0)
        ids = np.unique(inst[inst > 0])
        np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))
        for j in ids:  # every instance is one connected gland
            assert ndimage.label(inst == j, structure=np.ones((3, 3)))[1] == 1


def _solidity_and_lumen(malignant):
    solidity, pale = [], []
    for seed in range(6):
        rgb, inst, grade = render_tile(seed, 128, malignant=malignant)
        assert grade == malignant
        solidity += [r.solidity for r in regionprops(inst) if r.area > 30]
        inside = rgb[inst > 0].astype(float)
        pale.append((inside.mean(1) > 215).mean())  # share of pale (lumen) pixels in glands
    return np.mean(solidity), np.mean(pale)


def test_malignant_glands_are_less_solid_and_less_open():
    benign_solidity, benign_lumen = _solidity_and_lumen(False)
    malignant_solidity, malignant_lumen = _solidity_and_lumen(True)
    assert benign_solidity > 0.95
    assert malignant_solidity < benign_solidity - 0.05
    assert benign_lumen > malignant_lumen


def test_glands_determinism_and_cache(tmp_path):
    a = SyntheticGlands(tmp_path, split="val", size=48, n=4, seed=2)
    b = SyntheticGlands(None, split="val", size=48, n=4, seed=2, cache=False)
    c = SyntheticGlands(None, split="val", size=48, n=4, seed=3, cache=False)
    for i in range(4):
        for key in ("image", "instances", "label"):
            assert a[i][key].numpy().tobytes() == b[i][key].numpy().tobytes()
    assert any(a[i]["image"].numpy().tobytes() != c[i]["image"].numpy().tobytes() for i in range(4))
    assert len(list(tmp_path.iterdir())) == 1
    grades = SyntheticGlands(split="train", n=400, cache=False).grades
    assert 0.4 < grades.mean() < 0.6


@pytest.mark.slow
def test_a_full_default_split_builds(tmp_path):
    ds = SyntheticChestXray(tmp_path, split="val")
    assert len(ds) == 250 and ds[249]["image"].shape == (1, 128, 128)


def test_cached_datasets_pickle_by_file_name(tmp_path):
    import pickle

    for ds in (SyntheticChestXray(tmp_path, split="val", size=64, n=20),
               SyntheticGlands(tmp_path, split="val", size=64, n=20)):
        blob = pickle.dumps(ds)
        assert len(blob) < 20 * 64 * 64  # the images stay on disk
        clone = pickle.loads(blob)
        for key in ("image", "mask", "label"):
            assert clone[19][key].numpy().tobytes() == ds[19][key].numpy().tobytes()
        batch = next(iter(torch.utils.data.DataLoader(clone, batch_size=4)))
        assert batch["image"].shape[0] == 4 and len(batch["id"]) == 4


def test_separable_fourier_field_equals_the_direct_sum_of_waves():
    from sibnet.data.synth_fields import Frame, bump, fourier_field, smoothstep

    c, s = np.cos(0.3), np.sin(0.3)
    frame = Frame(40, (c / 0.9, s / 0.9, 0.1), (-s / 0.9, c / 0.9, -0.05))
    got = fourier_field(np.random.default_rng(5), frame, 7, (3.0, 9.0))
    rng = np.random.default_rng(5)  # the same draws, in the documented order
    theta, omega, phase = rng.uniform(0, np.pi, 7), rng.uniform(3.0, 9.0, 7), rng.uniform(0, 2 * np.pi, 7)
    t = (np.arange(40) + 0.5) * 2 / 40 - 1
    x, y = np.meshgrid(t, t)
    u, v = (c * x + s * y) / 0.9 + 0.1, (-s * x + c * y) / 0.9 - 0.05
    want = sum(np.cos(o * np.cos(a) * u + o * np.sin(a) * v + p) for a, o, p in zip(theta, omega, phase))
    np.testing.assert_allclose(got, want * np.sqrt(2 / 7), atol=2e-5)
    np.testing.assert_allclose(frame.u, u, atol=1e-6)
    assert smoothstep(0.0, 2.0, np.array([-1.0, 1.0, 3.0])).tolist() == [0.0, 0.5, 1.0]
    assert bump(np.array([0.0, 0.5, 1.0, 2.0])).tolist() == [1.0, 0.5625, 0.0, 0.0]


def test_cache_key_changes_with_the_renderer(monkeypatch):
    from sibnet.data import synth_cache

    knobs = {"split": "train", "n": 4, "size": 32}
    before = synth_cache.cache_key("chest", knobs)
    monkeypatch.setattr(synth_cache, "RENDERER_DIGEST", "0" * 16)
    assert synth_cache.cache_key("chest", knobs) != before
