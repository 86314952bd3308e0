"""The BUSI loader: the release layout and labels.csv, validation, near-duplicate groups, stratified folds."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_dataset
from PIL import Image
from scipy.ndimage import gaussian_filter, shift

from sibnet.cli import main
from sibnet.data import build_dataset
from sibnet.data.busi import BUSI, difference_hash, near_duplicate_groups
from sibnet.errors import ConfigError, DataError
from sibnet.evaluation import saliency_agreement

H, W = 48, 64


def _texture(seed: int) -> np.ndarray:
    """A smooth random ultrasound-like texture (uint8) with a dark blob: no ties for the hash."""
    field = gaussian_filter(np.random.default_rng(seed).random((H, W)), 3.0)
    field = (field - field.min()) / (np.ptp(field) + 1e-9)
    return np.clip(40 + 180 * field, 0, 255).astype(np.uint8)


def _blob(r0, r1, c0, c1) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[r0:r1, c0:c1] = 255
    return m


def _save(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _release(tmp_path):
    """benign (1) with two masks, benign (2) RGB, malignant (1), normal (1) with an empty mask."""
    root = tmp_path / "Dataset_BUSI_with_GT"
    _save(root / "benign" / "benign (1).png", _texture(1))
    _save(root / "benign" / "benign (1)_mask.png", _blob(5, 15, 5, 15))
    _save(root / "benign" / "benign (1)_mask_1.png", _blob(30, 40, 40, 55))
    rgb = np.stack([_texture(2), _texture(3), _texture(4)], -1)
    _save(root / "benign" / "benign (2).png", rgb)
    _save(root / "benign" / "benign (2)_mask.png", _blob(10, 20, 10, 30))
    _save(root / "malignant" / "malignant (1).png", _texture(5))
    _save(root / "malignant" / "malignant (1)_mask.png", _blob(20, 40, 20, 40))
    _save(root / "normal" / "normal (1).png", _texture(6))
    _save(root / "normal" / "normal (1)_mask.png", np.zeros((H, W), np.uint8))
    return root


def _tree(root):
    return sorted((p.relative_to(root).as_posix(), p.stat().st_mtime_ns) for p in root.rglob("*"))


def test_release_layout_merges_masks_converts_rgb_and_reads_empty_normal_masks(tmp_path):
    root = _release(tmp_path)
    before = _tree(root)
    ds = BUSI(tmp_path, image_size=(H, W), duplicate_bits=None)  # the release folder one level down
    assert ds.info.extra["layout"] == "release" and ds.info.task == "multiclass"
    assert ds.info.class_names == ("benign", "malignant", "normal") and ds.info.in_channels == 1
    assert ds.ids == ["benign (1)", "benign (2)", "malignant (1)", "normal (1)"]
    first = ds[0]
    assert first["mask"].shape == (3, H, W)
    union = (_blob(5, 15, 5, 15) | _blob(30, 40, 40, 55)) > 0
    np.testing.assert_array_equal(first["mask"][0].numpy() > 0, union)  # both masks, benign channel
    assert first["mask"][1:].sum() == 0
    rgb = ds[1]
    assert rgb["image"].shape == (1, H, W)
    luma = (0.299 * _texture(2) + 0.587 * _texture(3) + 0.114 * _texture(4)) / 255
    np.testing.assert_allclose(rgb["image"][0].numpy(), luma, atol=1.5 / 255)
    assert ds[2]["label"].tolist() == [0, 1, 0] and ds[2]["mask"][1].sum() == 400
    normal = ds[3]
    assert normal["label"].tolist() == [0, 0, 1] and normal["mask"].sum() == 0
    assert ds.info.extra["near_duplicate_groups"] == 4
    assert _tree(root) == before  # nothing written into the dataset folder


def test_release_layout_missing_mask_is_an_error_naming_it(tmp_path):
    root = _release(tmp_path)
    (root / "benign" / "benign (2)_mask.png").unlink()
    with pytest.raises(DataError, match=r"benign \(2\)_mask\.png not found"):
        BUSI(root)


def test_release_layout_orphan_mask_is_an_error_naming_it(tmp_path):
    root = _release(tmp_path)
    _save(root / "normal" / "normal (7)_mask.png", np.zeros((H, W), np.uint8))
    with pytest.raises(DataError, match=r"normal \(7\)_mask\.png: mask without its image"):
        BUSI(root)


def test_corrupt_image_is_an_error_naming_it(tmp_path):
    root = _release(tmp_path)
    (root / "malignant" / "malignant (1).png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DataError, match=r"malignant \(1\)\.png: unreadable image"):
        BUSI(root)


def test_mask_of_another_size_is_an_error_naming_it(tmp_path):
    root = _release(tmp_path)
    _save(root / "benign" / "benign (1)_mask_1.png", np.zeros((H, W + 2), np.uint8))
    with pytest.raises(DataError, match=r"benign \(1\)_mask_1\.png: mask is 66x48 .* is 64x48"):
        BUSI(root)


def test_missing_class_folder_and_bad_options(tmp_path):
    root = _release(tmp_path)
    for f in (root / "normal").iterdir():
        f.unlink()
    (root / "normal").rmdir()
    with pytest.raises(DataError, match=r"normal: class folder not found"):
        BUSI(root)
    assert len(BUSI(root, classes=["benign", "malignant"])) == 3
    with pytest.raises(ConfigError, match="classes must be"):
        BUSI(root, classes=["benign", "cyst"])
    with pytest.raises(ConfigError, match="no official test split"):
        BUSI(root, split="test")
    with pytest.raises(ConfigError, match="unknown option 'task'"):
        build_dataset("busi", root=root, task="multiclass")


def _processed(tmp_path, n_per_class=(8, 6, 4), duplicates=()):
    """labels.csv layout; ``duplicates``: (class, i) images that are a shifted, noisy copy of image i - 1."""
    root = tmp_path / "busi"
    rows = ["image,mask,label,original_file"]
    seed = 100
    for cls, count in zip(("benign", "malignant", "normal"), n_per_class):
        prev = None
        for i in range(count):
            seed += 1
            img = _texture(seed)
            if (cls, i) in duplicates:
                noise = np.random.default_rng(seed).integers(-3, 4, size=(H, W))
                img = np.clip(shift(prev.astype(float), (1, 1), mode="nearest") + noise, 0, 255).astype(np.uint8)
            prev = img
            _save(root / cls / f"{cls}_{i:03d}.png", img)
            mask = np.zeros((H, W), np.uint8) if cls == "normal" else _blob(10, 20, 10 + i, 30 + i)
            _save(root / cls / f"{cls}_{i:03d}_mask.png", mask)
            rows.append(f"{cls}/{cls}_{i:03d}.png,{cls}/{cls}_{i:03d}_mask.png,{cls},{cls} ({i + 1}).png")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_processed_layout_reads_labels_csv_and_keeps_its_columns(tmp_path):
    root = _processed(tmp_path)
    ds = build_dataset("busi", root=root, image_size=32)
    assert len(ds) == 18 and ds.info.extra["layout"] == "processed"
    assert ds.labels.sum(0).tolist() == [8, 6, 4]
    assert ds.records[0].extra["original_file"] == "benign (1).png"
    lesion = build_dataset("busi", root=root, image_size=32, classes=["benign", "malignant"])
    assert lesion.info.class_names == ("benign", "malignant") and len(lesion) == 14
    assert lesion[0]["mask"].shape == (2, 32, 32) and lesion[0]["mask"][0].sum() > 0
    binary = BUSI(root, image_size=32, mask_mode="binary")
    assert binary[0]["mask"].shape == (1, 32, 32)
    sub = BUSI(root, image_size=32, n=5, seed=3)
    assert len(sub) == 5 and sub.ids == BUSI(root, image_size=32, n=5, seed=3).ids
    assert set(sub.ids) <= set(ds.ids)


def test_processed_layout_row_errors_name_the_line(tmp_path):
    root = _processed(tmp_path)
    text = (root / "labels.csv").read_text().splitlines()
    bad = text[:3] + [text[3].replace(",benign,", ",cyst,")] + text[4:]
    (root / "labels.csv").write_text("\n".join(bad) + "\n")
    with pytest.raises(DataError, match=r"labels.csv line 4, column 'label': unknown label value 'cyst'"):
        BUSI(root)
    (root / "labels.csv").write_text("\n".join(text) + "\n")
    (root / "malignant" / "malignant_002_mask.png").unlink()
    with pytest.raises(DataError, match=r"labels.csv line 12, column 'mask': mask .*malignant_002_mask.png not found"):
        BUSI(root)


def test_difference_hash_tells_near_duplicates_from_other_images():
    a, b = _texture(1).astype(float), _texture(2).astype(float)
    near = np.clip(shift(a, (1, 1), mode="nearest") * 1.05 + 4, 0, 255)  # moved, brighter
    hashes = np.stack([difference_hash(x) for x in (a, near, b)])
    assert hashes.shape == (3, 256)
    assert (hashes[0] != hashes[1]).sum() <= 48 < (hashes[0] != hashes[2]).sum()
    assert near_duplicate_groups(hashes).tolist() == [0, 0, 1]
    assert near_duplicate_groups(hashes, None).tolist() == [0, 1, 2]


def test_folds_are_stratified_and_keep_near_duplicates_together(tmp_path):
    dups = {("benign", 1), ("benign", 2), ("benign", 5), ("malignant", 3), ("normal", 1)}
    root = _processed(tmp_path, n_per_class=(20, 10, 10), duplicates=dups)
    pool = BUSI(root, image_size=16)
    groups = dict(zip(pool.ids, pool.patients))
    assert groups["benign_000"] == groups["benign_001"] == groups["benign_002"] == "group:benign_000"
    assert groups["benign_004"] == groups["benign_005"] != groups["benign_003"]
    assert groups["normal_000"] == groups["normal_001"]
    assert pool.info.extra["near_duplicate_groups"] == 40 - 5
    assert pool.info.extra["images_in_shared_groups"] == 9
    seen = []
    for fold in range(5):
        tr = build_dataset("busi", root=root, image_size=16, fold=fold, split="train")
        va = build_dataset("busi", root=root, image_size=16, fold=fold, split="val")
        assert not set(tr.patients) & set(va.patients)
        assert len(tr) + len(va) == 40
        counts = va.labels.sum(0)
        assert abs(counts[0] - 4) <= 1 and abs(counts[1] - 2) <= 1 and abs(counts[2] - 2) <= 1, counts
        seen += va.ids
    assert sorted(seen) == sorted(pool.ids)


def test_held_out_test_parts_partition_the_pool_and_never_meet(tmp_path):
    """held_out_test: test = the fold's part, val = the next fold's part, train = the rest; groups never
    straddle parts, the test parts of the folds partition the pool, and every fold's parts are disjoint."""
    dups = {("benign", 1), ("benign", 5), ("malignant", 3)}
    root = _processed(tmp_path, n_per_class=(20, 10, 10), duplicates=dups)
    tests = []
    for fold in range(5):
        parts = {s: build_dataset("busi", root=root, image_size=16, fold=fold, split=s, held_out_test=True)
                 for s in ("train", "val", "test")}
        plain = {s: build_dataset("busi", root=root, image_size=16, fold=f, split="val")
                 for s, f in (("test", fold), ("val", (fold + 1) % 5))}
        assert parts["test"].ids == plain["test"].ids and parts["val"].ids == plain["val"].ids
        assert sum(len(p) for p in parts.values()) == 40
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            assert not set(parts[a].patients) & set(parts[b].patients), (fold, a, b)
        tests += parts["test"].ids
    assert sorted(tests) == sorted(BUSI(root, image_size=16).ids)
    with pytest.raises(ConfigError, match="held_out_test needs folds >= 3"):
        build_dataset("busi", root=root, image_size=16, fold=0, folds=2, split="test", held_out_test=True)


def test_agreement_scores_lesion_images_and_skips_normal_ones(tmp_path):
    root = _processed(tmp_path, n_per_class=(3, 2, 2))
    ds = BUSI(root, image_size=(H, W))
    masks = np.stack([ds[i]["mask"].numpy() for i in range(len(ds))])
    labels = ds.labels
    result = saliency_agreement(masks, masks, labels, class_names=ds.info.class_names)
    pc = result["per_class"]
    assert (pc["benign"]["n_pairs"], pc["malignant"]["n_pairs"], pc["normal"]["n_pairs"]) == (3, 2, 0)
    assert pc["benign"]["dice"]["mean"] == pytest.approx(1.0) and pc["normal"]["dice"]["mean"] is None
    assert result["mean"]["n_classes"] == 2


def test_data_commands_on_the_release_layout(tmp_path, capsys):
    root = _release(tmp_path)
    assert main(["data", "summary", "busi", "--root", str(root), "--image-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "train: 4 images, 4 near-duplicate groups (no patient ids)" in out
    assert [line.split() for line in out.splitlines() if line.strip().startswith(("benign ", "normal "))] == \
        [["benign", "2"], ["normal", "1"]]
    assert main(["data", "check", "busi", "--root", str(root), "--quiet"]) == 0
    assert "no problems" in capsys.readouterr().out
    (root / "benign" / "benign (1)_mask_1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert main(["data", "check", "busi", "--root", str(root), "--quiet"]) == 1
    assert "benign (1)_mask_1.png" in capsys.readouterr().out


def test_shared_copy_counts_groups_and_folds():
    root = shared_dataset("busi")
    ds = BUSI(root, image_size=32)
    assert len(ds) == 621 and ds.labels.sum(0).astype(int).tolist() == [345, 172, 104]
    assert ds.info.extra["layout"] == "processed"
    groups = ds.info.extra["near_duplicate_groups"]
    assert 400 < groups < 621  # the release holds near-duplicate images
    lesion = [i for i, r in enumerate(ds.records) if r.label[2] == 0]
    assert ds[lesion[0]]["mask"].sum() > 0 and ds[ds.ids.index("normal_001")]["mask"].sum() == 0
    vals = []
    for fold in (0, 1):
        tr = build_dataset("busi", root=root, image_size=8, fold=fold, split="train")
        va = build_dataset("busi", root=root, image_size=8, fold=fold, split="val")
        assert not set(tr.patients) & set(va.patients)
        np.testing.assert_allclose(va.labels.sum(0) / len(va), [345 / 621, 172 / 621, 104 / 621], atol=0.02)
        vals.append(set(va.ids))
    assert not vals[0] & vals[1]


def test_table3_adds_the_maps_share_on_burned_in_marks_for_busi(tmp_path):
    """Table 3's per-checkpoint agreement carries the marks share on BUSI (and only where marks exist)."""
    import torch

    from sibnet.evaluation.run import compute_maps, marks_summary
    from sibnet.experiments.agreement import checkpoint_agreement
    from sibnet.models import build_classifier

    root = _processed(tmp_path, n_per_class=(3, 2, 2))
    for path in sorted(root.glob("*/*_000.png")):  # a burned-in "+" on the first image of each class
        img = np.asarray(Image.open(path)).copy()
        img[8, 4:13] = img[4:13, 8] = 255
        _save(path, img)
    ds = BUSI(root, image_size=(H, W))
    torch.manual_seed(0)
    model = build_classifier("resnet18", in_channels=1, num_classes=3).eval()
    meta = {"dataset": "busi", "class_names": list(ds.info.class_names)}
    got = checkpoint_agreement(model, meta, ds, "gradcam", max_maps=5)
    maps = compute_maps(model, ds, "gradcam", range(5))
    want = marks_summary(maps["maps"], maps["images"], maps["labels"], meta["class_names"])
    assert got["marks"]["n"] == 5 and got["marks"]["mean"] == pytest.approx(want["mean"])
    assert 0 <= got["marks"]["mean"] <= 1 and got["marks"]["area_mean"] > 0
    synthetic = build_dataset("synthetic", split="test", image_size=32, n=4)
    plain = checkpoint_agreement(build_classifier("resnet18", 1, 5).eval(), {"dataset": "synthetic", "class_names":
                                 list(synthetic.info.class_names)}, synthetic, "gradcam", max_maps=4)
    assert "marks" not in plain
