"""``sibnet evaluate``: output files, values against scikit-learn and by hand, one-line errors."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from test_explain import tiny_checkpoint

from sibnet.cli import main


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    ckpt = tiny_checkpoint(tmp / "tiny.pt", n=24)
    out = tmp / "out"
    rc = main(["evaluate", "--checkpoint", str(ckpt), "--method", "input_x_gradient", "--n-boot", "200",
               "--out", str(out)])
    assert rc == 0
    return ckpt, out


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_files_and_auroc_auprc_equal_sklearn(evaluated):
    _, out = evaluated
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["dataset"] == "synthetic" and doc["split"] == "test" and doc["n_images"] == 24
    preds = _read_csv(out / "predictions.csv")
    assert len(preds) == 24
    names = list(doc["classification"]["per_label"])
    defined = []
    for name in names:
        p = np.array([float(r[f"prob:{name}"]) for r in preds])
        y = np.array([float(r[f"label:{name}"]) for r in preds])
        got = doc["classification"]["per_label"][name]
        if 0 < y.sum() < len(y):
            assert got["auroc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
            assert got["auprc"] == pytest.approx(average_precision_score(y, p), abs=1e-12)
            lo, hi = got["auroc_ci"]
            assert lo <= hi
            defined.append(got["auroc"])
        else:
            assert got["auroc"] is None
    assert defined
    assert doc["classification"]["mean"]["auroc"] == pytest.approx(np.mean(defined), abs=1e-12)
    rows = _read_csv(out / "metrics.csv")
    assert [r["label"] for r in rows] == names + ["mean"]
    assert float(rows[-1]["auroc"]) == pytest.approx(np.mean(defined), abs=1e-9)


def test_predictions_are_the_models_probabilities_on_the_checkpoints_data(evaluated):
    from sibnet.data.registry import build_dataset
    from sibnet.training.checkpoint import load_model_from_checkpoint

    ckpt, out = evaluated
    model, meta = load_model_from_checkpoint(ckpt)
    ds = build_dataset("synthetic", split="test", image_size=32, seed=0, n=24)  # config's n, no augmentation
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    with torch.no_grad():
        probs = torch.sigmoid(model(x)).numpy()
    preds = _read_csv(out / "predictions.csv")
    got = np.array([[float(r[f"prob:{n}"]) for n in meta["class_names"]] for r in preds])
    np.testing.assert_allclose(got, probs, atol=1e-6)
    labels = np.array([[float(r[f"label:{n}"]) for n in meta["class_names"]] for r in preds])
    np.testing.assert_array_equal(labels, ds.labels)
    assert [r["id"] for r in preds] == [ds[i]["id"] for i in range(len(ds))]


def test_agreement_pairs_and_dice_by_hand(evaluated):
    from scipy.spatial import ConvexHull  # noqa: F401  (the binarisation's own reference is tested elsewhere)

    from sibnet.data.registry import build_dataset
    from sibnet.evaluation import binarise_convex_hull
    from sibnet.saliency import get
    from sibnet.training.checkpoint import load_model_from_checkpoint

    ckpt, out = evaluated
    doc = json.loads((out / "metrics.json").read_text())
    agreement = doc["agreement"]
    ds = build_dataset("synthetic", split="test", image_size=32, seed=0, n=24)
    expected = [(i, ds.info.class_names[k]) for i in range(len(ds)) for k in range(5)
                if ds.labels[i, k] == 1 and ds[i]["mask"][k].any()]
    assert [(r["index"], r["class"]) for r in agreement["records"]] == expected
    model, _ = load_model_from_checkpoint(ckpt)
    rec = agreement["records"][0]
    i, k = rec["index"], list(ds.info.class_names).index(rec["class"])
    maps = get("input_x_gradient")(model, ds[i]["image"][None])[0].detach().numpy()
    hull = binarise_convex_hull(maps[k])
    mask = ds[i]["mask"][k].numpy() > 0.5
    dice = 2 * (hull & mask).sum() / (hull.sum() + mask.sum())
    assert rec["dice"] == pytest.approx(dice, abs=1e-6)
    rows = _read_csv(out / "agreement.csv")
    assert [r["class"] for r in rows] == list(ds.info.class_names) + ["mean"]
    n_pairs = {name: sum(1 for _, c in expected if c == name) for name in ds.info.class_names}
    assert {r["class"]: int(r["n_pairs"]) for r in rows[:-1]} == n_pairs


def test_class_distinctiveness_by_hand(evaluated):
    """The maps' and embeddings' mean pairwise cosine over classes, recomputed with numpy from the
    checkpoint's model: normalised maps, the encoder's pooled features of each map in eval mode."""
    from sibnet.data.registry import build_dataset
    from sibnet.models.embedding import penultimate
    from sibnet.saliency import get
    from sibnet.training.checkpoint import load_model_from_checkpoint

    ckpt, out = evaluated
    d = json.loads((out / "metrics.json").read_text())["distinctiveness"]
    assert (d["n_images"], d["n_classes"], d["embed_size"], d["method"]) == (24, 5, 32, "input_x_gradient")
    model, _ = load_model_from_checkpoint(ckpt)
    model.eval()
    ds = build_dataset("synthetic", split="test", image_size=32, seed=0, n=24)
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    m = np.maximum(get("input_x_gradient")(model, x).detach().numpy().astype(np.float64), 0)
    m = m / (m.max(axis=(2, 3), keepdims=True) + 1e-8)
    with torch.no_grad():
        stack = torch.from_numpy(m).float().flatten(0, 1)[:, None].expand(-1, x.shape[1], -1, -1)
        z = penultimate(model, stack).double().numpy().reshape(24, 5, -1)

    def mean_pair_cosine(v):  # (n, K, D) -> per-image mean over the class pairs
        unit = v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-8)
        return np.array([np.mean([unit[b, i] @ unit[b, j] for i in range(5) for j in range(i + 1, 5)])
                         for b in range(len(v))])

    maps_cos, emb_cos = mean_pair_cosine(m.reshape(24, 5, -1)), mean_pair_cosine(z)
    assert d["map_cosine"]["mean"] == pytest.approx(maps_cos.mean(), abs=1e-5)
    assert d["map_cosine"]["sd"] == pytest.approx(maps_cos.std(ddof=1), abs=1e-5)
    assert d["embedding_cosine"]["mean"] == pytest.approx(emb_cos.mean(), abs=1e-5)
    assert d["embedding_cosine"]["sd"] == pytest.approx(emb_cos.std(ddof=1), abs=1e-5)
    assert 0 < d["map_cosine"]["mean"] < 1


def test_distinctiveness_needs_two_classes_and_matching_shapes():
    from testnets import SmallCNN

    from sibnet.errors import SibnetError
    from sibnet.evaluation import map_distinctiveness

    with pytest.raises(SibnetError, match="needs at least one image and two classes, got 2 images, 1 classes"):
        map_distinctiveness(SmallCNN(), np.zeros((2, 1, 8, 8)), np.zeros((2, 1, 8, 8)))
    with pytest.raises(SibnetError, match=r"expected \(n, K, H, W\) maps and \(n, C, H, W\) images, got"):
        map_distinctiveness(SmallCNN(), np.zeros((2, 3, 8, 8)), np.zeros((3, 1, 8, 8)))


def test_stdout_table(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "t.pt", n=12)
    rc = main(["evaluate", "--checkpoint", str(ckpt), "--method", "none", "--n-boot", "20",
               "--out", str(tmp_path / "o")])
    text = capsys.readouterr().out
    assert rc == 0
    assert "AUROC" in text and "Cardiomegaly" in text and "\nmean" in text
    assert not (tmp_path / "o" / "agreement.csv").exists()
    doc = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert doc["agreement"] is None and doc["method"] is None
    assert all(math.isfinite(v) for v in doc["classification"]["mean"]["auroc_ci"] if v is not None)


def test_fold_of_the_checkpoint_gives_its_validation_split(tmp_path):
    from sibnet.data.registry import build_dataset

    ckpt = tiny_checkpoint(tmp_path / "t.pt", n=20, fold=1, folds=4)
    rc = main(["evaluate", "--checkpoint", str(ckpt), "--split", "val", "--method", "none", "--n-boot", "0",
               "--out", str(tmp_path / "o")])
    assert rc == 0
    val = build_dataset("synthetic", split="val", image_size=32, seed=0, n=20, fold=1, folds=4)
    preds = _read_csv(tmp_path / "o" / "predictions.csv")
    assert [r["id"] for r in preds] == [val[i]["id"] for i in range(len(val))]
    assert len(preds) == 5 and all(r["id"].startswith("synthetic-train-") for r in preds)


@pytest.mark.parametrize("args, needle", [
    (["--checkpoint", "{tmp}/missing.pt"], "missing.pt"),
    (["--checkpoint", "{tmp}/garbage.pt"], "garbage.pt"),
    (["--checkpoint", "{ckpt}", "--method", "nope"], "nope"),
    (["--checkpoint", "{ckpt}", "--n-boot", "-1"], "--n-boot"),
    (["--checkpoint", "{ckpt}", "--embed-size", "4"], "--embed-size"),
    (["--checkpoint", "{ckpt}", "--embed-size", "big"], "--embed-size"),
    (["--checkpoint", "{ckpt}", "--dataset", "synthetic-glands"], "classes"),
    (["--checkpoint", "{ckpt}", "--dataset", "nih"], "root"),
    (["--checkpoint", "{ckpt}", "--method", "gradcam", "--contrast", "clrp"], "contrast"),
    (["--checkpoint", "{ckpt}", "--saliency-option", "nokey"], "--saliency-option"),
    (["--checkpoint", "{ckpt}", "--saliency-option", "stabilizer=[", "--method", "deep_taylor"], "YAML"),
])
def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys, args, needle):
    ckpt = tiny_checkpoint(tmp_path / "t.pt", n=8)
    (tmp_path / "garbage.pt").write_bytes(b"\x00not a checkpoint")
    argv = ["evaluate"] + [a.format(tmp=tmp_path, ckpt=ckpt) for a in args] + ["--out", str(tmp_path / "o")]
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and needle in err


def test_batchnorm_statistics_re_estimated_on_the_training_split(tmp_path):
    """--bn-stats train: the predictions are those of the checkpoint after
    recalibrate_batchnorm on its own training split (built as the checkpoint's config says)."""
    from sibnet.commands.evaluate import dataset_for_checkpoint
    from sibnet.evaluation.batchnorm import recalibrate_batchnorm
    from sibnet.training.checkpoint import load_checkpoint, load_model_from_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "tiny.pt", n=24)
    out = tmp_path / "out"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--method", "none", "--n-boot", "0", "--bn-stats", "train",
                 "--out", str(out)]) == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["bn_stats"] == "re-estimated on 16 images of synthetic/train"  # 24 images: 1 batch of 16
    model, meta = load_model_from_checkpoint(ckpt)
    config = load_checkpoint(ckpt)["config"]
    test, _ = dataset_for_checkpoint(meta, config)
    x = torch.stack([test[i]["image"] for i in range(len(test))])
    model.eval()
    with torch.no_grad():
        stored = torch.sigmoid(model(x))
    train, _ = dataset_for_checkpoint(meta, config, split="train")
    recalibrate_batchnorm(model, train, batch_size=16, seed=0)
    with torch.no_grad():
        want = torch.sigmoid(model(x))
    preds = _read_csv(out / "predictions.csv")
    names = list(meta["class_names"])
    got = torch.tensor([[float(r[f"prob:{c}"]) for c in names] for r in preds])
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, stored, atol=1e-3)


def test_contrastive_maps_distinctiveness_matches_the_method(tmp_path):
    """--contrast clrp: the maps' mean pairwise cosine is that of deep_taylor(contrast="clrp") maps."""
    from sibnet.data.registry import build_dataset
    from sibnet.saliency import deep_taylor
    from sibnet.training.checkpoint import load_model_from_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "t.pt", n=8)
    out = tmp_path / "o"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--contrast", "clrp", "--n-boot", "0", "--out", str(out)]) == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["saliency_options"] == {"contrast": "clrp"}
    model, _ = load_model_from_checkpoint(ckpt)
    ds = build_dataset("synthetic", split="test", image_size=32, seed=0, n=8)
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    m = deep_taylor(model.eval(), x, contrast="clrp").clamp_min(0)
    m = m / (m.amax(dim=(2, 3), keepdim=True) + 1e-8)
    f = torch.nn.functional.normalize(m.flatten(2), dim=2, eps=1e-8)
    i, j = torch.triu_indices(5, 5, 1)
    cos = (f @ f.transpose(1, 2))[:, i, j].mean(1)
    assert doc["distinctiveness"]["map_cosine"]["mean"] == pytest.approx(cos.mean().item(), abs=1e-5)


def test_checkpoint_data_follows_its_fold_held_out_test_and_data_seed():
    """The evaluated split is the one training drew: the fold's held-out test part (data.held_out_test)
    with the data seed (data.seed, else train.seed)."""
    from sibnet.commands.evaluate import dataset_for_checkpoint
    from sibnet.data.registry import build_dataset

    meta = {"image_size": 16, "class_names": ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                                              "Pleural Effusion"], "dataset": "synthetic"}
    config = {"data": {"name": "synthetic", "fold": 2, "folds": 3, "held_out_test": True, "seed": 7,
                       "options": {"n": 30}}, "train": {"seed": 0}}
    got, _ = dataset_for_checkpoint(meta, config, split="test")
    want = build_dataset("synthetic", split="test", image_size=16, fold=2, folds=3, seed=7, held_out_test=True,
                         n=30)
    assert list(got.patients) == list(want.patients) and len(got) == 10
    from sibnet.config import data_seed, load_config

    # the dict reading equals the Config reading: data.seed, else train.seed (0 when a plain form lacks it)
    assert data_seed(config) == 7 and data_seed({"data": {"seed": None}, "train": {"seed": 3}}) == 3
    assert data_seed({}) == 0
    assert data_seed(load_config(None, ["train.seed=5"])) == 5 and data_seed(load_config(None, ["data.seed=2"])) == 2


def test_note_when_the_maps_are_not_those_the_loss_trained_on():
    from sibnet.commands.evaluate import loss_maps_note

    sib = {"loss": {"saliency": "deep_taylor", "contrast": "auto"}}
    note = loss_maps_note(sib, "deep_taylor", {})
    assert "trained on deep_taylor contrast=clrp maps" in note and "--method deep_taylor --contrast clrp" in note
    assert loss_maps_note(sib, "deep_taylor", {"contrast": "clrp"}) is None
    assert "--method deep_taylor" in loss_maps_note(sib, "gradcam", {})
    assert loss_maps_note({"loss": {"saliency": None}}, "deep_taylor", {}) is None  # a baseline
    assert loss_maps_note({"loss": {"saliency": "gradcam", "contrast": "auto"}}, "gradcam", {}) is None
    assert loss_maps_note(sib, None, {}) is None  # --method none


def test_shortcut_data_reports_the_glyph_share(tmp_path, capsys):
    """A model of synthetic data drawn with the shortcut glyph: evaluate prints and writes the maps' share inside
    the glyph, equal to glyph_summary on the evaluated maps."""
    from sibnet.data.synthetic import SyntheticChestXray
    from sibnet.evaluation.run import compute_maps, glyph_summary
    from sibnet.training.checkpoint import load_checkpoint, load_model_from_checkpoint, save_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "t.pt", n=24)
    payload = load_checkpoint(ckpt)
    payload["config"]["data"]["options"]["shortcut"] = "Cardiomegaly"
    save_checkpoint(ckpt, payload)
    out = tmp_path / "o"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--method", "input_x_gradient", "--n-boot", "20",
                 "--max-maps", "24", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "inside the shortcut glyph" in text and "the shortcut class" in text
    doc = json.loads((out / "metrics.json").read_text())["glyph"]
    model, meta = load_model_from_checkpoint(ckpt)
    data = SyntheticChestXray(split="test", size=32, n=24, shortcut="Cardiomegaly", seed=0)
    assert doc["shortcut"] == "Cardiomegaly" and doc["n"] == int(data.marker.sum()) > 0
    maps = compute_maps(model, data, "input_x_gradient", range(24))
    want = glyph_summary(maps["maps"], data.marker, data.info.extra["marker_box"], meta["class_names"], "Cardiomegaly")
    assert doc["mean"] == pytest.approx(want["mean"]) and doc["area"] == pytest.approx(49 / 1024)
