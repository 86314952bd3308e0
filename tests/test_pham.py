"""The ``pham`` recipe (Pham et al. 2020): U-LSR, the conditional stage-1 loss, the stage schedule in
the loop, exact resume across a kill in stage 1 (and 2), ``sibnet train`` and the table1 method.

Run as a script, this file is the child process of the resume test (``--pause-at K`` stops inside
optimizer step K+1 and prints PAUSED, so the parent kills it at a known point).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from testnets import kill_child_at
from torch.utils.data import Dataset

from sibnet.config import load_config
from sibnet.data.base import DatasetInfo
from sibnet.errors import ConfigError
from sibnet.losses.classification import class_weights_from_labels, weighted_bce
from sibnet.training import recipes
from sibnet.training.recipes import (
    PhamRecipe,
    Relabeled,
    conditional_targets,
    resolve_hierarchy,
    stage1_steps,
    uncertain_soft_targets,
)

torch.set_num_threads(1)
LABELS = ("Lung Opacity", "Edema", "Cardiomegaly")  # default tree: Lung Opacity -> Edema; Cardiomegaly a root here
SIZE, EPOCHS, BATCHES = 16, 3, 6  # 24 training images, batch 4: 6 steps per epoch, stage 1 = 9 steps


class TreeSet(Dataset):
    """Three labels with uncertain (-1) entries; a bright block per present finding."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        y = (torch.rand(n, 3, generator=g) < 0.5).float()
        y[:, 1] = torch.where(y[:, 0] > 0, y[:, 1], (torch.rand(n, generator=g) < 0.2).float())
        y[torch.rand(n, 3, generator=g) < 0.15] = -1.0
        y[0], y[1] = torch.tensor([1.0, 1.0, 0.0]), torch.tensor([0.0, 0.0, 1.0])
        x = torch.rand(n, 1, SIZE, SIZE, generator=g) * 0.3
        for k, cols in enumerate((slice(1, 5), slice(6, 10), slice(11, 15))):
            x[:, 0, 4:12, cols] += 0.6 * (y[:, k] != 0).float()[:, None, None]
        self.x, self.y = x, y
        self.info = DatasetInfo("tree", LABELS, task="multilabel", in_channels=1)
        self.patients = [f"p{i}" for i in range(n)]

    @property
    def labels(self) -> np.ndarray:
        return self.y.numpy()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i] + 0.05 * torch.randn(1, SIZE, SIZE), "label": self.y[i], "id": str(i),
                "patient": self.patients[i]}


class TinyNet(nn.Module):
    model_name = "tiny"

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                      nn.Conv2d(4, 8, 3, padding=1, stride=2), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.features(x))


def tiny_config(out, *overrides):
    return load_config(None, [f"out={out}", "data.batch_size=4", f"train.epochs={EPOCHS}", "train.deterministic=true",
                              "train.progress=false", "train.device=cpu", "loss.saliency=null", "train.recipe=pham",
                              *overrides])


def tiny_trainer(cfg, loss_factory=None):
    from sibnet.training import Trainer

    torch.manual_seed(123)
    return Trainer(cfg, datasets=(TreeSet(24, 0), TreeSet(12, 1), None), model=TinyNet(), loss_factory=loss_factory)


def recording_factory(seen: list):
    """The real loss (SIBNetLoss, saliency off) that also records the targets of every call."""
    from sibnet.training.build import sibnet_loss_factory

    def factory(net, cfg, task, class_weight):
        inner = sibnet_loss_factory(net, cfg, task, class_weight)

        def call(x, y):
            seen.append(y.detach().clone())
            return inner(x, y)
        return call
    return factory


# ------------------------------------------------------------------ functional core

def test_ulsr_hand_checked():
    nan = math.nan
    y = np.array([[1, -1, 0], [-1, nan, 1], [0, 0, -1], [0.3, 1, 1]], np.float32)
    draws = np.random.default_rng(7).uniform(0.55, 0.85, size=y.shape).astype(np.float32)
    out = uncertain_soft_targets(y, (0.55, 0.85), seed=7)
    for i, j in [(0, 1), (1, 0), (2, 2)]:
        assert out[i, j] == draws[i, j] and 0.55 <= out[i, j] <= 0.85
    certain = (y != -1) & ~np.isnan(y)
    assert np.array_equal(out[certain], y[certain]) and np.isnan(out[1, 1])
    # default range, same seed: same draws
    assert np.array_equal(uncertain_soft_targets(y, seed=7), out, equal_nan=True)
    assert not np.array_equal(uncertain_soft_targets(y, seed=8), out, equal_nan=True)
    assert uncertain_soft_targets(y, (0.7, 0.7), seed=1)[0, 1] == pytest.approx(0.7)


def test_prepare_relabels_train_and_val_and_counts_uncertain_as_positive():
    recipes._WARNED.clear()
    train, val = TreeSet(24, 0), TreeSet(12, 1)
    cfg = tiny_config("/tmp/unused")
    r = PhamRecipe(cfg)
    t2, v2 = r.prepare(train, val)
    assert isinstance(t2, Relabeled) and r.prepare(t2, v2) == (t2, v2)  # idempotent
    y = train.labels
    unc = y == -1
    assert r.uncertain == int(unc.sum()) > 0
    np.testing.assert_array_equal(t2.labels[~unc], y[~unc])
    assert ((t2.labels[unc] >= 0.55) & (t2.labels[unc] <= 0.85)).all()
    item = t2[3]
    assert torch.equal(item["label"], torch.from_numpy(t2.labels[3])) and item["id"] == "3"
    hard = np.where(unc, 1.0, y)
    pos, neg = (hard == 1).sum(0), (hard == 0).sum(0)
    from sibnet.training.labels import dataset_labels
    np.testing.assert_allclose(class_weights_from_labels(dataset_labels(t2)).numpy(), neg / pos, rtol=1e-6)
    vy = val.labels
    assert np.isnan(v2.labels[vy == -1]).all() and np.array_equal(v2.labels[vy != -1], vy[vy != -1])


def test_conditional_stage1_loss_equals_hand_computed_masked_bce():
    # Lung Opacity (0) -> Edema (1); Cardiomegaly (2) a root
    parents, report = resolve_hierarchy({"Lung Opacity": ["Edema"]}, LABELS, strict=True)
    assert parents == {1: (0,)} and report == {"unconditional": [], "partial": {}}
    y = torch.tensor([[1.0, 1.0, 0.0],     # parent positive: Edema counts
                      [0.0, 1.0, 1.0],     # parent negative: Edema masked
                      [1.0, 0.7, 0.0],     # soft child, parent positive
                      [0.6, 0.0, 1.0],     # smoothed uncertain parent (> 0.5): positive
                      [math.nan, 1.0, 0.0]])  # parent masked: Edema masked
    z = torch.tensor([[0.3, -1.2, 2.0], [1.5, 0.4, -0.7], [-0.2, 0.9, 0.1], [0.8, -0.3, 1.1], [0.0, 2.2, -1.0]])
    w = torch.tensor([2.0, 0.5, 3.0])
    t = conditional_targets(y, parents)
    loss = weighted_bce(z, t, w)

    def term(zv, yv, wv):
        s = 1 / (1 + math.exp(-zv))
        return -(wv * yv * math.log(s) + (1 - yv) * math.log(1 - s))

    counted = [(i, j) for i in range(5) for j in range(3)
               if not (j == 1 and i in (1, 4)) and not (i == 4 and j == 0)]
    expected = sum(term(float(z[i, j]), float(y[i, j]), float(w[j])) for i, j in counted) / len(counted)
    assert len(counted) == 12 and float(loss) == pytest.approx(expected, rel=1e-6)
    assert torch.isnan(t[1, 1]) and torch.isnan(t[4, 1]) and t[3, 1] == 0 and t[2, 1] == pytest.approx(0.7)
    assert torch.equal(t[:, 2], y[:, 2])  # roots keep every image
    # the whole batch (nothing masked) would give the plain mean: the mask changes the value
    assert float(weighted_bce(z, torch.nan_to_num(y, nan=0.0), w)) != pytest.approx(expected)


def test_chexpert_tree_restricted_to_the_dataset_labels():
    from sibnet.data.chexpert import COMPETITION, OBSERVATIONS

    parents, report = resolve_hierarchy(recipes.CHEXPERT_HIERARCHY, COMPETITION)
    assert parents == {} and report["unconditional"] == ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema"]
    full, report = resolve_hierarchy(recipes.CHEXPERT_HIERARCHY, OBSERVATIONS)
    names = {OBSERVATIONS[c]: sorted(OBSERVATIONS[p] for p in ps) for c, ps in full.items()}
    assert names == {"Cardiomegaly": ["Enlarged Cardiomediastinum"], "Lung Lesion": ["Lung Opacity"],
                     "Edema": ["Lung Opacity"], "Consolidation": ["Lung Opacity"],
                     "Pneumonia": ["Consolidation", "Lung Opacity"], "Atelectasis": ["Lung Opacity"]}
    part, report = resolve_hierarchy(recipes.CHEXPERT_HIERARCHY, ("Consolidation", "Pneumonia"))
    assert part == {1: (0,)} and report["partial"] == {"Pneumonia": ["Lung Opacity"]}
    # the run says which labels lose their parent
    recipes._WARNED.clear()
    cfg = load_config(None, ["train.recipe=pham", "loss.saliency=null"])
    with pytest.warns(UserWarning, match="Atelectasis, Cardiomegaly, Consolidation, Edema have no parent label .*"
                                         r"\(Enlarged Cardiomediastinum, Lung Opacity absent\)"):
        PhamRecipe(cfg)._hierarchy(COMPETITION)


def test_options_and_errors():
    cfg = load_config(None, ["train.recipe=pham", "train.epochs=3"])
    o = cfg.train.recipe_options
    assert o == {"stage1": 0.5, "stage1_epochs": 1.5, "stage1_steps": None, "lsr_range": [0.55, 0.85],
                 "hierarchy": "chexpert"}
    assert stage1_steps(o, 6) == 9 and stage1_steps(o, 5) == 8  # round(7.5) half up
    o = load_config(None, ["train.recipe=pham", "train.epochs=3", "train.max_steps=10"]).train.recipe_options
    assert (o["stage1_epochs"], o["stage1_steps"]) == (1.5, 5.0) and stage1_steps(o, 6) == 5
    assert stage1_steps(o, 2) == 3  # the epochs end first: 3 epochs of 2 steps, half is 3
    o = load_config(None, ["train.recipe=pham", "train.recipe_options={stage1_steps: 4}"]).train.recipe_options
    assert o["stage1_epochs"] is None and stage1_steps(o, 100) == 4
    for override, message in [
        ("train.recipe=other", "train.recipe"),
        ("train.recipe_options={stage1: 0.5}", "train.recipe is null"),
        ("train.recipe_options={stage: 0.5}", "unknown key 'stage'"),
        ("train.recipe_options={stage1: 1.5}", r"stage1: expected a number in \[0, 1\]"),
        ("train.recipe_options={lsr_range: [0.9, 0.5]}", "lsr_range"),
        ("train.recipe_options={hierarchy: nih}", "hierarchy"),
        ("train.recipe_options={hierarchy: {A: [B], B: [A]}}", "cycle"),
    ]:
        extra = [] if override.startswith("train.recipe=") or "null" in message else ["train.recipe=pham"]
        with pytest.raises(ConfigError, match=message):
            load_config(None, [*extra, override])
    with pytest.raises(ConfigError, match="'Pneumonia' not among the dataset's labels"):
        resolve_hierarchy({"Lung Opacity": ["Pneumonia"]}, LABELS, strict=True)


def test_chexpert_training_pool_read_with_uncertain_labels_kept(tmp_path):
    """Under pham a CheXpert pool without an ``uncertainty`` option keeps -1, which U-LSR smooths;
    the class weights count those labels as positive, i.e. on the default U-Ones labels."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_data_chexpert import make_chexpert

    from sibnet.training.build import build_datasets
    from sibnet.training.labels import dataset_labels

    root = make_chexpert(tmp_path)
    common = ["data.name=chexpert", f"data.root={root}", "data.fold=0", "data.folds=3", "data.image_size=8",
              "loss.saliency=null"]
    recipes._WARNED.clear()
    with pytest.warns(UserWarning, match="no parent label"):
        train, val, _ = build_datasets(load_config(None, [*common, "train.recipe=pham"]))
    plain, _, _ = build_datasets(load_config(None, common))
    raw = train.dataset.labels
    unc = raw == -1
    assert unc.any() and not (plain.labels == -1).any()
    assert ((train.labels[unc] >= 0.55) & (train.labels[unc] <= 0.85)).all()
    np.testing.assert_array_equal(train.labels[~unc], plain.labels[~unc])
    np.testing.assert_array_equal(dataset_labels(train), plain.labels)  # U-Ones


# ------------------------------------------------------------------ the loop

def test_stages_in_the_loop(tmp_path):
    seen: list = []
    cfg = tiny_config(tmp_path / "run", "train.recipe_options={hierarchy: {Lung Opacity: [Edema]}}")
    tiny_trainer(cfg, recording_factory(seen)).fit()
    assert len(seen) == EPOCHS * BATCHES
    for step, t in enumerate(seen):
        assert not (t == -1).any() and not torch.isnan(t[:, [0, 2]]).any()
        assert ((t[:, 0] > 0.5) | torch.isnan(t[:, 1])).all() if step < 9 else not torch.isnan(t).any()
        if step < 9:
            assert torch.isnan(t[:, 1]).equal(~(t[:, 0] > 0.5))
    assert sum(int(torch.isnan(t).sum()) for t in seen[:9]) > 0  # some Edema terms were masked in stage 1
    soft = torch.cat(seen)
    assert ((soft > 0) & (soft < 1)).any() and ((soft[(soft > 0) & (soft < 1)] >= 0.55) &
                                                (soft[(soft > 0) & (soft < 1)] <= 0.85)).all()
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert [float(r["train_stage"]) for r in rows] == [1.0, 1.5, 2.0]  # the switch inside epoch 2
    desc = json.loads((tmp_path / "run" / "recipe.json").read_text())
    assert desc["stage1_steps"] == 9 and desc["conditional"] == {"Edema": ["Lung Opacity"]}
    assert desc["uncertain_labels_smoothed"] == int((TreeSet(24, 0).labels == -1).sum())


def child(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--pause-at", type=int, default=None)
    p.add_argument("--checkpoint-every", type=int, default=0)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    calls = {"n": 0}
    from sibnet.training.build import sibnet_loss_factory

    def pausing(net, cfg, task, class_weight):
        inner = sibnet_loss_factory(net, cfg, task, class_weight)

        def call(x, y):
            if calls["n"] == a.pause_at:
                print("PAUSED", flush=True)
                time.sleep(600)
            calls["n"] += 1
            return inner(x, y)
        return call

    cfg = tiny_config(a.out, f"train.checkpoint_every={a.checkpoint_every}")
    tiny_trainer(cfg, loss_factory=pausing).fit()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    from sibnet.training import load_checkpoint

    out = tmp_path_factory.mktemp("pham-reference") / "run"
    tiny_trainer(tiny_config(out, "train.checkpoint_every=2")).fit()
    return load_checkpoint(out / "last.pt")


@pytest.mark.parametrize("kill_step, resumed_from", [
    (5, 4),  # stage 1, mid-epoch 1 (checkpoint at step 4)
    pytest.param(11, 10, marks=pytest.mark.slow),  # stage 2 (steps 10..18), mid-epoch 2
])
def test_killed_then_resumed_equals_uninterrupted(tmp_path, reference, kill_step, resumed_from):
    from sibnet.training import load_checkpoint

    out = tmp_path / "run"
    kill_child_at(__file__, out, kill_step, 2)
    saved = load_checkpoint(out / "last.pt")["state"]
    assert saved["step"] == resumed_from and (resumed_from < 9) == (kill_step < 9)  # killed in the same stage
    tiny_trainer(tiny_config(out, "train.checkpoint_every=2")).fit(resume=out)
    final = load_checkpoint(out / "last.pt")
    assert final["state"]["step"] == EPOCHS * BATCHES
    for k, v in reference["model"].items():
        assert torch.equal(final["model"][k], v), k
    for i, st in reference["optimizer"]["state"].items():
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(final["optimizer"]["state"][i][name], st[name]), (i, name)
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in reference["state"]["history"]]
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in final["state"]["history"]] == strip


# ------------------------------------------------------------------ commands

def test_sibnet_train_with_the_recipe(tmp_path, capsys):
    from sibnet.cli import main

    out = tmp_path / "run"
    code = main(["train", "--dataset", "synthetic", "--model", "resnet18", "--image-size", "32", "--batch-size", "4",
                 "--device", "cpu", "--no-progress", "--saliency", "none", "--epochs", "2", "--out", str(out),
                 "data.options={n: 8, uncertain_rate: 0.5}", "train.deterministic=true", "train.recipe=pham",
                 "train.recipe_options={hierarchy: {Edema: [Pleural Effusion]}}"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["epochs"] == 2 and summary["steps"] == 4
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [float(r["train_stage"]) for r in rows] == [1.0, 2.0]
    desc = json.loads((out / "recipe.json").read_text())
    assert desc["stage1_steps"] == 2 and desc["conditional"] == {"Pleural Effusion": ["Edema"]}
    assert desc["uncertain_labels_smoothed"] > 0
    import yaml
    saved = yaml.safe_load((out / "config.yaml").read_text())["train"]
    assert saved["recipe"] == "pham" and saved["recipe_options"]["stage1_epochs"] == 1.0


def test_table1_has_a_pham_row(tmp_path):
    """On the five competition findings without uncertain labels pham reduces to the baseline: the
    same weights, the same row; the header no longer lists pham as not implemented."""
    from sibnet.cli import main
    from sibnet.experiments.methods import get_method, not_implemented
    from sibnet.experiments.tables import read_csv_table
    from sibnet.training import load_checkpoint

    assert get_method("pham").overrides == {"loss.saliency": None, "train.recipe": "pham"}
    assert "pham" not in [m.name for m in not_implemented()]
    runs, out = tmp_path / "runs", tmp_path / "tables"
    assert main(["experiment", "table1", "--dataset", "synthetic", "--image-size", "32", "--folds", "2", "--seeds",
                 "1", "--budget", "steps=1", "--batch-size", "8", "--data-option", "n=16", "--methods",
                 "baseline,pham", "--runs", str(runs), "--out", str(out)]) == 0
    _, rows = read_csv_table(out / "table1.csv")
    by = {r["method"]: r for r in rows}
    assert by["pham"]["runs"] == "2" and by["pham"]["auroc_mean"] == by["baseline"]["auroc_mean"]
    md = (out / "table1.md").read_text()
    assert "| pham | 2/2 |" in md and "not implemented" not in md
    for fold in (0, 1):
        a = load_checkpoint(runs / "pham" / f"fold{fold}-seed0" / "last.pt")
        b = load_checkpoint(runs / "baseline" / f"fold{fold}-seed0" / "last.pt")
        assert a["config"]["train"]["recipe"] == "pham" and b["config"]["train"]["recipe"] is None
        for k, v in b["model"].items():
            assert torch.equal(a["model"][k], v), k


if __name__ == "__main__":
    child(sys.argv[1:])
