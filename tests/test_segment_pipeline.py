"""Segmentation pipeline: data preparation, prediction at original size, instance PNGs, the CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import shared_dataset
from PIL import Image
from skimage.measure import label as cc_label

from sibnet.cli import main
from sibnet.data.transforms import resize_labels
from sibnet.evaluation.glas import glas_dataset_scores, glas_scores
from sibnet.segmentation.data import Sample, class_weights, load_samples, prepare, save_instances_png
from sibnet.segmentation.predict import instances_from_probability, predict_samples


def test_class_weights_inverse_frequency():
    m = torch.zeros(1, 3, 4, dtype=torch.long)
    m[0, 0, :3] = 1  # 3 gland pixels of 12
    torch.testing.assert_close(class_weights(m), torch.tensor([12 / 18, 12 / 6]))
    with pytest.raises(Exception, match="lack class"):
        class_weights(torch.zeros(1, 4, 4, dtype=torch.long))


def test_prepare_resizes_image_and_mask():
    inst = np.zeros((50, 70), np.int64)
    inst[10:30, 5:40] = 1
    inst[35:45, 50:65] = 2
    img = np.random.default_rng(0).random((50, 70, 3)).astype(np.float32)
    x, m = prepare([Sample("a", img, inst)], (32, 64), normalize=((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
    assert x.shape == (1, 3, 32, 64) and m.shape == (1, 32, 64)
    np.testing.assert_array_equal(m[0].numpy(), resize_labels((inst > 0).astype(np.int64), (32, 64)))
    raw, _ = prepare([Sample("a", img, inst)], (32, 64))
    torch.testing.assert_close(x, (raw - 0.5) / 0.25)


def test_instances_from_probability_min_area():
    p = np.zeros((12, 12), np.float32)
    p[0, 0] = 0.9  # area 1
    p[3:5, 3:5] = 0.8  # area 4
    p[8:11, 8:11] = 0.51  # area 9
    p[0, 11] = 0.5  # not above 0.5
    inst = instances_from_probability(p)
    assert inst.max() == 3
    kept = instances_from_probability(p, min_area=4)
    assert sorted(np.bincount(kept.ravel())[1:].tolist()) == [4, 9] and kept.max() == 2
    assert (kept[3:5, 3:5] > 0).all() and kept[0, 0] == 0


class ThresholdNet(nn.Module):
    """Gland where the first channel exceeds 0.5: logits (0, 40 (x0 - 0.5))."""

    def forward(self, x):
        return torch.cat([torch.zeros_like(x[:, :1]), 40 * (x[:, :1] - 0.5)], dim=1)


def test_predictions_come_back_at_original_size(tmp_path):
    h, w = 130, 190
    inst = np.zeros((h, w), np.int64)
    yy, xx = np.mgrid[:h, :w]
    inst[(yy - 40) ** 2 + (xx - 50) ** 2 < 25 ** 2] = 1
    inst[(yy - 90) ** 2 + (xx - 140) ** 2 < 30 ** 2] = 2
    img = np.repeat((inst > 0).astype(np.float32)[..., None], 3, axis=2)
    s = Sample("blobs", img, inst)
    [pred] = predict_samples(ThresholdNet(), [s], (64, 96), out_dir=tmp_path)
    assert pred.shape == (h, w)
    sc = glas_scores(pred, inst)
    assert sc["tp"] == 2 and sc["fp"] == 0 and sc["pixel_dice"] > 0.97
    back = np.asarray(Image.open(tmp_path / "blobs_pred.png"))
    np.testing.assert_array_equal(back, pred)


def test_save_instances_png_16_bit(tmp_path):
    inst = np.arange(300 * 2, dtype=np.int64).reshape(20, 30) % 300
    save_instances_png(tmp_path / "x.png", inst)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "x.png")).astype(np.int64), inst)


def _is_cc_labelling(inst: np.ndarray) -> bool:
    ref = cc_label(inst > 0, connectivity=2)
    # same partition: a bijection between labels
    pairs = set(zip(inst.ravel().tolist(), ref.ravel().tolist()))
    labels = set(np.unique(inst[inst > 0]).tolist())
    return len(pairs) == len(np.unique(inst)) == len(np.unique(ref)) and labels == set(range(1, inst.max() + 1))


def test_cli_train_evaluate_predict_synthetic(tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["segment", "train", "--dataset", "synthetic-glands", "--limit", "4", "--scratch",
               "--backbone", "resnet18", "--size", "64", "--epochs", "2", "--decoder-channels", "8,8,8,8,8",
               "--out", str(run)])
    assert rc == 0
    assert (run / "model.pt").is_file()
    with open(run / "history.csv") as fh:
        assert [r["epoch"] for r in csv.DictReader(fh)] == ["1", "2"]
    capsys.readouterr()
    ev = tmp_path / "ev"
    rc = main(["segment", "evaluate", str(run / "model.pt"), "--split", "val", "--limit", "3", "--out", str(ev),
               "--save-predictions"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((ev / "scores.json").read_text())
    # the written PNGs, scored independently, give the reported numbers
    samples = load_samples("synthetic-glands", None, "val", limit=3)
    preds = [np.asarray(Image.open(ev / f"{s.id}_pred.png")).astype(np.int64) for s in samples]
    for p in preds:
        assert p.shape == (128, 128) and _is_cc_labelling(p)
    ref = glas_dataset_scores([(p, s.instances) for p, s in zip(preds, samples)])
    for key in ("f1", "object_dice", "pixel_dice", "tp", "fp", "fn"):
        assert printed[key] == pytest.approx(ref[key]) and saved[key] == pytest.approx(ref[key])
    with open(ev / "per_image.csv") as fh:
        assert [r["id"] for r in csv.DictReader(fh)] == [s.id for s in samples]
    # predict on image files
    f = tmp_path / "tile.png"
    Image.fromarray((samples[0].image * 255).round().astype(np.uint8)).save(f)
    out = tmp_path / "pred"
    assert main(["segment", "predict", str(run / "model.pt"), "--images", str(f), "--out", str(out)]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(out / "tile_pred.png")).astype(np.int64), preds[0])


def test_cli_errors(tmp_path, capsys):
    assert main(["segment", "train", "--dataset", "synthetic-glands", "--scratch", "--encoder-checkpoint", "x.pt",
                 "--out", str(tmp_path)]) == 2
    assert "exactly one of" in capsys.readouterr().err
    assert main(["segment", "train", "--dataset", "synthetic-glands", "--scratch", "--size", "100x100",
                 "--out", str(tmp_path)]) == 2
    assert "multiples of 32" in capsys.readouterr().err
    assert main(["segment", "evaluate", str(tmp_path / "none.pt")]) == 2
    assert "not found" in capsys.readouterr().err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epoch: 3\n")
    assert main(["segment", "train", "--config", str(cfg), "--scratch", "--out", str(tmp_path)]) == 2
    assert "unknown setting 'epoch'" in capsys.readouterr().err


def test_glas_four_images_end_to_end(tmp_path, capsys):
    root = shared_dataset("glas")
    run = tmp_path / "run"
    assert main(["segment", "train", "--root", str(root), "--limit", "4", "--scratch", "--backbone", "resnet18",
                 "--size", "64x96", "--epochs", "1", "--decoder-channels", "8,8,8,8,8", "--out", str(run)]) == 0
    capsys.readouterr()
    ev = tmp_path / "ev"
    assert main(["segment", "evaluate", str(run / "model.pt"), "--root", str(root), "--limit", "2", "--min-area", "200",
                 "--out", str(ev), "--save-predictions"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["n_images"] == 2
    for s in load_samples("glas", root, "testA", limit=2):
        pred = np.asarray(Image.open(ev / f"{s.id}_pred.png"))
        assert pred.shape == s.instances.shape == (522, 775)


def test_loss_is_weighted_ce_plus_weighted_dice():
    from sibnet.segmentation.train import segmentation_loss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 5, 6, generator=g)
    y = (torch.rand(2, 5, 6, generator=g) > 0.6).long()
    w = torch.tensor([0.7, 1.8])
    p = torch.softmax(logits, 1)
    onehot = torch.stack([y == 0, y == 1], 1).float()
    inter = (p * onehot).sum((2, 3))
    dice = 1 - (2 * inter + 1e-5) / (p.sum((2, 3)) + onehot.sum((2, 3)) + 1e-5)  # (B, K)
    expected = (dice * w).mean() + torch.nn.functional.cross_entropy(logits, y, weight=w)
    torch.testing.assert_close(segmentation_loss(w)(logits, y[:, None]), expected)
