"""The share of saliency on burned-in marks, on constructed images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from sibnet.errors import DataError
from sibnet.evaluation import marks_region, marks_share

S = 64


def _scan(seed=0):
    """Smooth mid-grey tissue, a dark lesion blob at (40, 20), a white 1-px '+' at (15, 45), and a thick
    bright square (not thin: not a mark) at (45, 48)."""
    rng = np.random.default_rng(seed)
    field = gaussian_filter(rng.random((S, S)), 4)
    img = 0.45 + 0.08 * (field - field.mean()) / field.std()
    rr, cc = np.mgrid[:S, :S]
    lesion = (rr - 40) ** 2 + (cc - 20) ** 2 <= 8**2
    img[lesion] = 0.1
    plus = np.zeros((S, S), bool)
    plus[15, 40:51] = True
    plus[10:21, 45] = True
    img[plus] = 1.0
    square = (rr >= 40) & (rr < 52) & (cc >= 42) & (cc < 54)
    img[square] = 0.95
    return np.clip(img, 0, 1), plus, lesion, square


def test_region_finds_the_thin_cross_but_not_the_lesion_or_the_thick_square():
    img, plus, lesion, square = _scan()
    region = marks_region(img)
    assert region[plus].mean() > 0.9
    assert not region[lesion].any() and region[square].mean() < 0.05
    assert region.mean() < 0.05
    np.testing.assert_array_equal(marks_region(img * 3.0 - 1.2), region)  # affine normalisation: same region
    assert marks_region(img, dilate=1).sum() > region.sum()
    assert not marks_region(np.full((S, S), 0.3)).any()


def test_share_is_near_one_on_the_cross_near_zero_on_the_lesion_and_area_when_uniform():
    img, plus, lesion, square = _scan()
    on_plus = gaussian_filter(plus.astype(float), 0.3)
    on_lesion = np.exp(-(((np.mgrid[:S, :S][0] - 40) ** 2 + (np.mgrid[:S, :S][1] - 20) ** 2) / (2 * 5.0**2)))
    maps = np.stack([on_plus, on_lesion, np.ones((S, S)), square.astype(float)])[None]  # (1, 4, S, S)
    out = marks_share(maps, img[None, None])
    share = out["share"][0]
    assert share[0] > 0.9
    assert share[1] < 0.02
    assert share[2] == pytest.approx(out["area"][0])
    assert share[3] < 0.1
    assert out["n"] == 4 and out["mean"] == pytest.approx(share.mean())
    assert out["enrichment"] == pytest.approx(out["mean"] / out["area_mean"])


def test_labels_select_the_maps_summarised_and_empty_maps_are_left_out():
    a, plus_a, lesion_a, _ = _scan(1)
    b, plus_b, lesion_b, _ = _scan(2)
    maps = np.zeros((2, 2, S, S))
    maps[0, 0] = plus_a  # labelled class of image 0: on the cross
    maps[0, 1] = lesion_a
    maps[1, 1] = lesion_b  # labelled class of image 1: on the lesion; class 0 map is empty
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    out = marks_share(torch.from_numpy(maps).float(), torch.from_numpy(np.stack([a, b])[:, None]).float(), labels)
    assert np.isnan(out["share"][1, 0])
    assert out["n"] == 2 and out["mean"] == pytest.approx((out["share"][0, 0] + out["share"][1, 1]) / 2)
    assert out["share"][0, 0] > 0.9 and out["share"][1, 1] < 0.02
    assert marks_share(maps, np.stack([a, b])[:, None])["n"] == 3
    neg = marks_share(-maps, np.stack([a, b])[:, None])  # only the positive part counts
    assert neg["n"] == 0 and neg["mean"] is None


def test_bad_arguments_are_one_line_errors():
    img = np.zeros((1, 1, S, S))
    with pytest.raises(DataError, match="'maps' must have shape"):
        marks_share(np.zeros((S, S)), img)
    with pytest.raises(DataError, match="'images' must have shape"):
        marks_share(np.zeros((1, 2, S, S)), np.zeros((1, 1, S, S + 1)))
    with pytest.raises(DataError, match="'labels' has shape"):
        marks_share(np.zeros((1, 2, S, S)), img, labels=np.zeros((1, 3)))
    with pytest.raises(DataError, match="'threshold'"):
        marks_region(np.zeros((S, S)), threshold=2)
    with pytest.raises(DataError, match="nan or inf"):
        marks_share(np.full((1, 2, S, S), np.nan), img)


def test_evaluate_reports_the_marks_share_on_busi_by_default(tmp_path):
    from test_data_busi import _processed
    from testnets import SmallCNN

    from sibnet.data.busi import BUSI
    from sibnet.evaluation.run import evaluate

    torch.manual_seed(0)
    ds = BUSI(_processed(tmp_path, n_per_class=(3, 2, 2)), image_size=32)
    model = SmallCNN(num_classes=3)
    result = evaluate(model, ds, method="input_x_gradient", n_boot=0)
    marks = result["marks"]
    direct = marks_share(result["maps"]["maps"], result["maps"]["images"], result["maps"]["labels"])
    assert marks["n"] == direct["n"] > 0 and marks["mean"] == pytest.approx(direct["mean"])
    assert set(marks["per_class"]) == {"benign", "malignant", "normal"}
    assert sum(c["n"] for c in marks["per_class"].values()) == marks["n"]
    assert evaluate(model, ds, method="input_x_gradient", n_boot=0, marks=False)["marks"] is None


def test_glyph_share_of_the_shortcut_class_on_images_with_the_glyph():
    """glyph_summary: the shortcut class's mass inside the glyph box, over the images that carry the glyph only;
    a uniform map gives the box's area, a map inside the box 1, an all-zero map is left out."""
    from sibnet.errors import SibnetError
    from sibnet.evaluation.run import glyph_summary

    names = ["A", "B"]
    box = (0, 4, 12, 16)  # 16 of 256 pixels
    maps = np.zeros((4, 2, 16, 16))
    maps[0, 0, 0:4, 12:16] = 1.0  # image 0, class A: all mass on the glyph
    maps[0, 1] = 1.0  # class B uniform
    maps[1, 0] = 1.0  # image 1, class A uniform
    maps[1, 1, 8:, :] = 1.0  # class B away from the glyph
    maps[2, 0, 0:4, 12:16] = 5.0  # image 2 has no glyph: not summarised
    # image 3 (glyph): class A all zero -> no positive mass, left out
    marker = np.array([True, True, False, True])
    out = glyph_summary(maps, marker, box, names, "A")
    assert out["n"] == 3 and out["area"] == pytest.approx(16 / 256) and out["shortcut"] == "A"
    assert out["mean"] == pytest.approx((1.0 + 16 / 256) / 2)
    assert out["per_class"]["B"] == pytest.approx((16 / 256 + 0.0) / 2)
    assert glyph_summary(maps, np.zeros(4, bool), box, names, "A")["mean"] is None
    with pytest.raises(SibnetError, match="shortcut class 'C'"):
        glyph_summary(maps, marker, box, names, "C")
    with pytest.raises(SibnetError, match="one glyph flag per image"):
        glyph_summary(maps, marker[:3], box, names, "A")
