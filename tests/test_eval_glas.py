"""GlaS challenge metrics on small hand-drawn instance maps, scores computed by hand."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from monai.metrics import compute_hausdorff_distance

from sibnet.errors import DataError
from sibnet.evaluation.glas import glas_dataset_scores, glas_scores, label_instances


def case_a():
    """10x10 image. GT: G1 rows 0-3 x cols 0-3 (16 px), G2 rows 6-9 x cols 6-9 (16), G3 rows 0-1 x
    cols 8-9 (4). Pred: S1 rows 0-3 x cols 0-1 (8 px, half of G1), S2 rows 6-9 x cols 5-9 (20,
    contains G2), S3 rows 8-9 x cols 0-1 (4, touches no GT)."""
    g = np.zeros((10, 10), int)
    g[0:4, 0:4] = 1
    g[6:10, 6:10] = 2
    g[0:2, 8:10] = 3
    s = np.zeros((10, 10), int)
    s[0:4, 0:2] = 7  # labels need not be consecutive
    s[6:10, 5:10] = 3
    s[8:10, 0:2] = 1
    return s, g


def test_case_a_by_hand():
    s, g = case_a()
    r = glas_scores(s, g)
    # F1: S1 covers 8/16 = 0.5 of G1, not > 0.5 -> FP; S2 covers 16/16 of G2 -> TP; S3 -> FP.
    # TP = 1, FP = 2, FN = 3 - 1 = 2; F1 = 2*1 / (2*1 + 2 + 2) = 1/3.
    assert (r["tp"], r["fp"], r["fn"]) == (1, 2, 2)
    assert r["f1"] == pytest.approx(1 / 3)
    assert r["precision"] == pytest.approx(1 / 3) and r["recall"] == pytest.approx(1 / 3)
    # Object Dice. GT side (total area 36): D(G1,S1) = 2*8/(16+8) = 2/3, D(G2,S2) = 2*16/(16+20) = 8/9,
    # G3 has no overlap -> 0. Sum = 16/36*2/3 + 16/36*8/9 = 56/81.
    # Pred side (total area 32): 8/32*2/3 + 20/32*8/9 + 4/32*0 = 1/6 + 5/9 = 13/18.
    # Object Dice = (56/81 + 13/18) / 2 = 229/324.
    assert r["object_dice"] == pytest.approx(229 / 324)
    # Object Hausdorff (pixel sets). H(G1,S1) = 2 (G1 col 3 to S1 col 1); H(G2,S2) = 1 (S2 col 5 to
    # G2 col 6). G3 overlaps nothing: nearest pred object by Hausdorff: S1 sqrt(68) (S1 (3,0) to
    # G3 (1,8)), S2 sqrt(73) (S2 (9,5) to G3 (1,8)), S3 sqrt(128) -> S1, sqrt(68).
    # GT side: 16/36*2 + 16/36*1 + 4/36*sqrt(68) = 4/3 + sqrt(68)/9.
    # S3 overlaps nothing: H(S3,G1) = sqrt(68) (G1 (0,3) to S3 (8,1)), H(S3,G2) = sqrt(68)
    # (G2 (6,9) to S3 (8,1)), H(S3,G3) = sqrt(128) -> sqrt(68).
    # Pred side: 8/32*2 + 20/32*1 + 4/32*sqrt(68) = 9/8 + sqrt(68)/8.
    expected_h = (4 / 3 + math.sqrt(68) / 9 + 9 / 8 + math.sqrt(68) / 8) / 2
    assert r["object_hausdorff"] == pytest.approx(expected_h)
    # Pixel Dice: |S| = 32, |G| = 36, |S ∩ G| = 8 + 16 = 24 -> 48/68 = 12/17.
    assert r["pixel_dice"] == pytest.approx(12 / 17)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = compute_hausdorff_distance(
            torch.tensor(s > 0)[None, None].float(), torch.tensor(g > 0)[None, None].float(),
            include_background=True, percentile=95,
        )
    assert r["pixel_hd95"] == pytest.approx(float(ref[0, 0]), abs=1e-5)
    # Weights per object: areas are reported
    assert sorted(a for a, _, _ in r["objects"]["gt"]) == [4, 16, 16]
    assert sorted(a for a, _, _ in r["objects"]["pred"]) == [4, 8, 20]


def test_merge_and_split():
    # GT: two 2x3 glands side by side (rows 1-2, cols 0-2 and cols 4-6) in a 4x8 image.
    g = np.zeros((4, 8), int)
    g[1:3, 0:3] = 1
    g[1:3, 4:7] = 2
    # merge: one pred object covering both glands and the gap (rows 1-2, cols 0-6: 14 px).
    # Its matched GT is the one with most overlap: 6 vs 6, a tie -> smallest label, G1; 6/6 > 0.5
    # -> TP = 1, FP = 0, FN = 1; F1 = 2 / (2 + 0 + 1) = 2/3.
    s = np.zeros_like(g)
    s[1:3, 0:7] = 1
    r = glas_scores(s, g)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 0, 1) and r["f1"] == pytest.approx(2 / 3)
    # Object Dice: each GT matches the merged object: D = 2*6/(6+14) = 3/5, weights 1/2 each ->
    # 3/5; the pred side matches G1: D = 3/5 with weight 1 -> object Dice = 3/5.
    assert r["object_dice"] == pytest.approx(3 / 5)
    # split: G1 cut into two 1x3 halves (3/6 = 0.5 each, not > 0.5) -> both FP; G2 missed.
    s = np.zeros_like(g)
    s[1, 0:3] = 1
    s[2, 0:3] = 2
    r = glas_scores(s, g)
    assert (r["tp"], r["fp"], r["fn"]) == (0, 2, 2) and r["f1"] == 0.0


def test_perfect_and_empty_images():
    s, g = case_a()
    r = glas_scores(g, g)
    assert r["f1"] == 1.0 and r["object_dice"] == 1.0 and r["object_hausdorff"] == 0.0
    assert r["pixel_dice"] == 1.0 and r["pixel_hd95"] == 0.0
    z = np.zeros_like(g)
    e = glas_scores(z, z)
    assert e["f1"] == 1.0 and e["object_dice"] == 1.0 and e["object_hausdorff"] == 0.0
    m = glas_scores(z, g)  # everything missed
    assert (m["tp"], m["fp"], m["fn"]) == (0, 0, 3)
    assert m["f1"] == 0.0 and m["object_dice"] == 0.0 and m["object_hausdorff"] == math.inf


def test_dataset_aggregation_pools_objects():
    s, g = case_a()
    b = np.zeros((6, 6), int)
    b[1:3, 1:3] = 5  # image B: one 4-px gland segmented perfectly
    r = glas_dataset_scores([(s, g), (b, b)])
    # F1: TP = 1 + 1, FP = 2 + 0, FN = 2 + 0 -> 4 / (4 + 2 + 2) = 1/2 (per-image mean: (1/3 + 1)/2).
    assert (r["tp"], r["fp"], r["fn"]) == (2, 2, 2) and r["f1"] == pytest.approx(0.5)
    assert r["mean_image_f1"] == pytest.approx(2 / 3)
    # Object Dice over all objects. GT areas 16, 16, 4, 4 (sum 40):
    # (16*2/3 + 16*8/9 + 4*0 + 4*1) / 40 = (96/9 + 128/9 + 36/9) / 40 = 13/18.
    # Pred areas 8, 20, 4, 4 (sum 36): (8*2/3 + 20*8/9 + 0 + 4*1) / 36 = (48 + 160 + 36)/9/36 = 61/81.
    # Object Dice = (13/18 + 61/81) / 2 = 239/324.
    assert r["object_dice"] == pytest.approx(239 / 324)
    assert r["mean_image_object_dice"] == pytest.approx((229 / 324 + 1) / 2)
    # Object Hausdorff pooled: GT side (16*2 + 16*1 + 4*sqrt(68) + 4*0) / 40,
    # pred side (8*2 + 20*1 + 4*sqrt(68) + 4*0) / 36.
    h = ((48 + 4 * math.sqrt(68)) / 40 + (36 + 4 * math.sqrt(68)) / 36) / 2
    assert r["object_hausdorff"] == pytest.approx(h)
    assert r["pixel_dice"] == pytest.approx((12 / 17 + 1) / 2)
    # the same from precomputed per-image results
    again = glas_dataset_scores([glas_scores(s, g), glas_scores(b, b)])
    assert again["object_dice"] == r["object_dice"] and len(again["per_image"]) == 2


def test_spacing_scales_distances():
    s, g = case_a()
    r1, r2 = glas_scores(s, g), glas_scores(s, g, spacing=0.5)
    assert r2["object_hausdorff"] == pytest.approx(r1["object_hausdorff"] / 2)
    assert r2["pixel_hd95"] == pytest.approx(r1["pixel_hd95"] / 2)
    assert r2["object_dice"] == r1["object_dice"]


def test_label_instances_and_bad_input():
    m = np.zeros((5, 5))
    m[0, 0] = m[1, 1] = m[4, 4] = 1  # diagonal neighbours join with 8-connectivity
    assert label_instances(m).max() == 2
    assert label_instances(m, connectivity=1).max() == 3
    with pytest.raises(DataError, match="pred_instances"):
        glas_scores(np.full((4, 4), 0.5), np.zeros((4, 4), int))
    with pytest.raises(DataError, match="shape"):
        glas_scores(np.zeros((4, 4), int), np.zeros((4, 5), int))
    with pytest.raises(DataError, match="negative"):
        glas_scores(-np.ones((4, 4), int), np.zeros((4, 4), int))


@pytest.mark.data
def test_real_glas_annotation():
    from conftest import shared_dataset
    from PIL import Image
    from scipy.ndimage import binary_erosion

    g = np.array(Image.open(shared_dataset("glas") / "testA_1_anno.png")).astype(int)
    n = len(np.unique(g)) - 1
    r = glas_scores(g, g)
    assert (r["tp"], r["fp"], r["fn"]) == (n, 0, 0) and r["object_dice"] == 1.0
    # glands eroded by 3 px keep > 50% of their area: every gland still a TP, Dice below 1,
    # and the set Hausdorff of each gland to its eroded self is at least 3 px
    pred = label_instances(binary_erosion(g > 0, iterations=3))
    e = glas_scores(pred, g)
    assert e["f1"] == 1.0 and 0.9 < e["object_dice"] < 1.0 and e["object_hausdorff"] >= 3.0
