"""Convex-hull binarisation, Dice, HD95 (against MONAI), SSIM and saliency agreement."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from monai.metrics import compute_hausdorff_distance
from scipy.spatial import ConvexHull
from skimage.draw import polygon
from skimage.metrics import structural_similarity
from skimage.morphology import convex_hull_image

from sibnet.errors import DataError
from sibnet.evaluation.agreement import binarise_convex_hull, hull_of_points, saliency_agreement, ssim
from sibnet.evaluation.overlap import dice, hausdorff, hd95


def square(shape, r0, r1, c0, c1):
    m = np.zeros(shape, dtype=bool)
    m[r0:r1, c0:c1] = True
    return m


def monai_hd95(a, b, spacing=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = compute_hausdorff_distance(
            torch.tensor(a)[None, None].float(), torch.tensor(b)[None, None].float(),
            include_background=True, percentile=95, spacing=spacing,
        )
    return float(t[0, 0])


def test_square_map_inside_square_mask_by_hand():
    # map: 4x4 block of ones at rows/cols 8..11 in a 20x20 zero map; mask: 8x8 square rows/cols 6..13.
    # Otsu splits {0, 1} -> foreground = the 16 ones; hull of their centres = the 4x4 block itself.
    # Dice = 2*16 / (16 + 64) = 0.4.
    sal = square((20, 20), 8, 12, 8, 12).astype(float)
    mask = square((20, 20), 6, 14, 6, 14)
    hull = binarise_convex_hull(sal)
    assert (hull == sal.astype(bool)).all()
    assert dice(hull, mask) == pytest.approx(0.4)
    # HD95: boundary of the 4x4 block (12 px) lies 2 px from the 8x8 boundary along its axis
    # (corners: sqrt(8) from the mask's corner, but 2 from the nearest edge pixel) -> all 2;
    # boundary of the 8x8 (28 px) to the block: 2 for the 4 px facing each block side (rows 6 /13
    # over cols 8..11 etc.), more for the others, max at the corners sqrt(2^2+2^2).
    ref = monai_hd95(hull, mask)
    assert hd95(hull, mask) == pytest.approx(ref, abs=1e-5)
    assert hd95(hull, mask, percentile=100) == pytest.approx(math.sqrt(8))
    assert ssim(hull, mask) == pytest.approx(
        structural_similarity(hull.astype(float), mask.astype(float), data_range=1.0)
    )


def test_hull_fills_a_triangle_and_thresholds():
    # three pixels above threshold at (2,2), (2,10), (10,2): the hull is the right triangle with
    # legs of 8; lattice points inside or on it: sum_{r=0..8} (9 - r) = 45.
    sal = np.zeros((16, 16))
    sal[2, 2] = sal[2, 10] = sal[10, 2] = 1.0
    sal[12, 12] = 0.3  # below the fixed threshold 0.5, above the mean
    hull = binarise_convex_hull(sal, threshold=0.5)
    assert hull.sum() == 45
    assert hull[2, 2] and hull[6, 6] and not hull[7, 7]
    # with the mean as threshold, (12,12) joins: a quadrilateral containing the triangle
    quad = binarise_convex_hull(sal, threshold="mean")
    assert quad[12, 12] and quad[7, 7] and (quad >= hull).all()


def test_hull_agrees_with_scikit_image_and_draw_polygon():
    rng = np.random.default_rng(0)
    for _ in range(40):
        pts_mask = rng.random((30, 24)) < 0.015
        if pts_mask.sum() < 3:
            continue
        pts = np.argwhere(pts_mask)
        ours = hull_of_points(pts, pts_mask.shape)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = convex_hull_image(pts_mask, offset_coordinates=False)
        if ref.any():  # scikit-image returns empty for degenerate (collinear) sets
            assert (ours == ref).all()
            # draw.polygon fills the interior; ours adds exactly the pixels on the hull boundary
            hull = ConvexHull(pts)
            v = pts[hull.vertices]
            rr, cc = polygon(v[:, 0], v[:, 1], pts_mask.shape)
            filled = np.zeros_like(ours)
            filled[rr, cc] = True
            assert (filled <= ours).all()
            extra = np.argwhere(ours & ~filled).astype(float)
            dist = np.abs(extra @ hull.equations[:, :2].T + hull.equations[:, 2]).min(axis=1)
            assert (dist < 1e-9).all()


@pytest.mark.parametrize(
    "points,expected",
    [
        ([], []),
        ([(3, 4)], [(3, 4)]),
        ([(3, 4), (3, 5)], [(3, 4), (3, 5)]),  # adjacent: the points themselves
        ([(1, 1), (5, 9)], [(1, 1), (2, 3), (3, 5), (4, 7), (5, 9)]),  # lattice points on the segment
        ([(0, 0), (2, 2), (6, 6)], [(k, k) for k in range(7)]),  # collinear with a gap
        ([(2, 0), (2, 3), (2, 7)], [(2, c) for c in range(8)]),
    ],
)
def test_hull_degenerate_cases(points, expected):
    out = hull_of_points(np.array(points, dtype=int).reshape(-1, 2), (8, 10))
    assert sorted(map(tuple, np.argwhere(out).tolist())) == sorted(expected)


def test_constant_map_gives_empty_hull():
    assert not binarise_convex_hull(np.full((9, 9), 0.3)).any()
    assert not binarise_convex_hull(np.zeros((9, 9)), threshold="mean").any()


def test_hd95_against_monai_random_shapes_and_spacing():
    rng = np.random.default_rng(1)
    from scipy.ndimage import binary_dilation

    for _ in range(12):
        a = binary_dilation(rng.random((32, 40)) < 0.01, iterations=3)
        b = binary_dilation(rng.random((32, 40)) < 0.01, iterations=2)
        if not a.any() or not b.any():
            continue
        assert hd95(a, b) == pytest.approx(monai_hd95(a, b), rel=1e-5, abs=1e-5)
        assert hd95(a, b, spacing=(0.5, 2.0)) == pytest.approx(monai_hd95(a, b, spacing=(0.5, 2.0)), rel=1e-5)
    # foreground touching the image border: border counts as background, as in MONAI
    a, b = square((10, 10), 0, 10, 0, 4), square((10, 10), 3, 8, 2, 9)
    assert hd95(a, b) == pytest.approx(monai_hd95(a, b), abs=1e-5)


def test_empty_conventions_follow_monai():
    z, s = np.zeros((8, 8), bool), square((8, 8), 2, 5, 2, 5)
    assert math.isnan(hd95(z, z)) and math.isnan(monai_hd95(z, z))
    # one mask empty: inf, as MONAI's maximum Hausdorff distance; MONAI's percentile=95 path
    # returns nan there (torch.quantile of all-inf distances), which we do not copy
    assert hd95(z, s) == math.inf == hd95(s, z)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = compute_hausdorff_distance(torch.tensor(z)[None, None].float(), torch.tensor(s)[None, None].float(),
                                       include_background=True)
    assert float(t[0, 0]) == math.inf
    assert math.isnan(dice(z, z)) and dice(z, s) == 0.0
    assert hausdorff(z, z) == 0.0 and hausdorff(z, s) == math.inf


def test_set_hausdorff_by_hand():
    # a: pixel (0,0); b: pixels (0,0) and (3,4): farthest b point from a is 5 away
    a = np.zeros((6, 6), bool)
    a[0, 0] = True
    b = a.copy()
    b[3, 4] = True
    assert hausdorff(a, b) == pytest.approx(5.0)
    assert hausdorff(a, b, spacing=2.0) == pytest.approx(10.0)


def test_saliency_agreement_selects_present_classes_with_masks():
    # image 0: class 0 present with mask (scored), class 1 absent (skipped);
    # image 1: class 0 present but empty mask (skipped), class 1 present with mask, flat map (empty hull).
    maps = np.zeros((2, 2, 20, 20))
    masks = np.zeros((2, 2, 20, 20))
    maps[0, 0, 8:12, 8:12] = 1.0
    masks[0, 0, 6:14, 6:14] = 1
    masks[0, 1, 0:5, 0:5] = 1
    masks[1, 1, 2:6, 2:6] = 1
    labels = np.array([[1, 0], [1, 1]])
    r = saliency_agreement(torch.tensor(maps), torch.tensor(masks), torch.tensor(labels), ["a", "b"])
    assert [(x["index"], x["class"]) for x in r["records"]] == [(0, "a"), (1, "b")]
    assert r["per_class"]["a"]["dice"]["mean"] == pytest.approx(0.4)
    assert r["per_class"]["b"]["dice"]["mean"] == 0.0
    assert r["per_class"]["b"]["n_empty_maps"] == 1
    assert r["per_class"]["b"]["hd95"]["n"] == 0 and r["per_class"]["b"]["hd95"]["mean"] is None
    assert r["mean"]["dice"] == pytest.approx(0.2) and r["mean"]["n_classes"] == 2
    assert r["mean"]["hd95"] == pytest.approx(r["per_class"]["a"]["hd95"]["mean"])


def test_bad_inputs():
    with pytest.raises(DataError, match="threshold"):
        binarise_convex_hull(np.zeros((8, 8)), threshold="median")
    with pytest.raises(DataError, match="nan"):
        binarise_convex_hull(np.full((8, 8), np.nan))
    with pytest.raises(DataError, match="7x7"):
        ssim(np.zeros((5, 5)), np.zeros((5, 5)))
    with pytest.raises(DataError, match="labels"):
        saliency_agreement(np.zeros((2, 1, 8, 8)), np.zeros((2, 1, 8, 8)), np.zeros((2, 2)))
    with pytest.raises(DataError, match="spacing"):
        hd95(np.ones((4, 4)), np.ones((4, 4)), spacing=(1, 2, 3))
