"""The capacity study (Fig. 12): width-scaled DenseNet-121, capacity-<base>-<m> methods, the table.

References: parameter counts of models built for real (MONAI ``DenseNet121``), the standard
DenseNet-121's weights under the same seed, ``weighted_bce`` / ``F.cross_entropy`` on logits, and
the numbers a job folder holds (``val_loss.csv``, ``done.json``, its model re-run on the
evaluation split).
"""

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sibnet.cli import main
from sibnet.errors import ConfigError
from sibnet.experiments.tables import read_csv_table

torch.set_num_threads(1)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------ width-scaled DenseNet-121

@pytest.mark.parametrize("m", [0.2, 0.5, 1, 1.5, 2])
def test_parameter_count_within_tolerance(m):
    """build_classifier's model (on the meta device: shapes only) against m x the standard count."""
    from monai.networks import nets

    from sibnet.models.classifier import build_classifier, densenet121_width

    with torch.device("meta"):
        reference = n_params(nets.DenseNet121(spatial_dims=2, in_channels=1, out_channels=5))
        model = build_classifier(f"densenet121-x{m:g}", 1, 5)
    count = n_params(model)
    width = densenet121_width(m, 1, 5)
    assert width["reference"] == reference == 6952709 and width["parameters"] == count
    assert abs(count / (m * reference) - 1) < 0.05, (m, count / reference)
    assert model.features.conv0.out_channels == width["init_features"]
    assert model.features.denseblock1.denselayer1.layers.conv2.out_channels == width["growth_rate"]


def test_real_model_and_other_channels_and_classes():
    from monai.networks import nets

    from sibnet.models.classifier import build_classifier, densenet121_width

    with torch.device("meta"):
        reference = n_params(nets.DenseNet121(spatial_dims=2, in_channels=3, out_channels=14))
    model = build_classifier("densenet121-x0.2", 3, 14).eval()  # real weights this time
    count = n_params(model)
    assert count == densenet121_width(0.2, 3, 14)["parameters"]
    assert abs(count / (0.2 * reference) - 1) < 0.05
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 14)


def test_m1_is_the_standard_densenet121():
    from sibnet.models.classifier import build_classifier

    torch.manual_seed(3)
    scaled = build_classifier("densenet121-x1", 1, 5, dropout=0.2)
    torch.manual_seed(3)
    standard = build_classifier("densenet121", 1, 5, dropout=0.2)
    a, b = scaled.state_dict(), standard.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert str(scaled) == str(standard)


@pytest.mark.parametrize("g,f,cin,ncls,dims", [(32, 64, 1, 5, 2), (7, 13, 3, 14, 2), (45, 91, 1, 5, 2),
                                               (1, 1, 1, 1, 2), (13, 27, 2, 3, 3)])
def test_formula_equals_the_built_model(g, f, cin, ncls, dims):
    from monai.networks import nets

    from sibnet.models.classifier import densenet_parameter_formula

    with torch.device("meta"):
        built = n_params(nets.DenseNet121(spatial_dims=dims, in_channels=cin, out_channels=ncls, init_features=f,
                                          growth_rate=g))
    assert densenet_parameter_formula(g, f, cin, ncls, dims) == built


def test_the_rule_takes_the_closest_configuration():
    """Among the configurations the rule can produce for w in [0.5, 0.9], m = 0.5 takes the closest."""
    from sibnet.models.classifier import _channels, densenet121_width, densenet_parameter_formula

    width = densenet121_width(0.5, 1, 5)
    target = 0.5 * width["reference"]
    configs = {_channels(w) for w in np.arange(0.5, 0.9, 1 / 1280)}
    best = min(configs, key=lambda c: abs(densenet_parameter_formula(*c, 1, 5) - target))
    assert (width["growth_rate"], width["init_features"]) == best


@pytest.mark.parametrize("name", ["densenet121-x0", "densenet121-x-1", "densenet121-xabc", "densenet121-x20",
                                  "densenet121-xnan", "densenet121-x0.01"])
def test_bad_model_names(name):
    from sibnet.models.classifier import build_classifier

    with pytest.raises(ConfigError, match="densenet121-x<m>"):
        build_classifier(name, 1, 5)


def test_saliency_on_a_scaled_model():
    from sibnet.models.classifier import build_classifier
    from sibnet.saliency import deep_taylor, gradcam

    torch.manual_seed(0)
    model = build_classifier("densenet121-x0.05", 1, 3).eval()
    assert model.features.denseblock1.denselayer1.layers.conv2.out_channels == 7
    x = torch.rand(2, 1, 32, 32)
    for method in (gradcam, deep_taylor):
        maps = method(model, x)
        assert maps.shape == (2, 3, 32, 32) and torch.isfinite(maps).all() and maps.abs().sum() > 0
    maps = deep_taylor(model, x, create_graph=True)  # differentiable, as the SIBNet loss needs
    maps.sum().backward()
    assert model.features.conv0.weight.grad is not None


# ------------------------------------------------------------------ methods

def test_capacity_methods_from_names():
    from sibnet.experiments.methods import METHODS, get_method

    m = get_method("capacity-sibnet-0.5")
    assert (m.name, m.model, m.overrides) == ("capacity-sibnet-0.5", "densenet121-x0.5", METHODS["sibnet"].overrides)
    assert get_method("capacity-baseline-2").model == "densenet121-x2"
    assert get_method("capacity-sibnet-plus-1").unlabeled
    lam = get_method("capacity-sibnet-lambda-0.5-1-1.5")
    assert lam.model == "densenet121-x1.5" and lam.overrides["loss.lambda_cd"] == 0.5


def test_attention_bases_are_width_scaled():
    from sibnet.experiments.methods import METHODS, Method, capacity_method, get_method
    from sibnet.models.attention import CBAM
    from sibnet.models.classifier import build_classifier, densenet121_width, parameter_count

    se = get_method("capacity-se-0.5")
    assert (se.model, se.overrides) == ("densenet121-se-x0.5", METHODS["se"].overrides)
    assert get_method("capacity-cbam-2").model == "densenet121-cbam-x2"
    width = densenet121_width(0.5, 1, 5)
    for name, kind in (("densenet121-se-x0.5", "ChannelSELayer"), ("densenet121-cbam-x0.5", "CBAM")):
        model = build_classifier(name, 1, 5)
        assert model.features.denseblock1.denselayer1.layers.conv2.out_channels == width["growth_rate"]
        assert sum(type(m).__name__ == kind for m in model.modules()) == 4  # after each dense block
        n = parameter_count(name, 1, 5)
        assert n == sum(p.numel() for p in model.parameters())
        # the plain width's count plus the attention's own parameters (a few percent)
        assert width["parameters"] < n < 1.1 * width["parameters"]
        assert model(torch.rand(2, 1, 32, 32)).shape == (2, 5)
    assert parameter_count("densenet121-cbam-x1", 1, 5) == parameter_count("densenet121-cbam", 1, 5)
    assert isinstance(build_classifier("densenet121-cbam-x1", 1, 5).features.attention1, CBAM)
    with pytest.raises(ConfigError, match="densenet121-se-x<m>"):
        build_classifier("densenet121-se-x0", 1, 5)
    with pytest.raises(ConfigError, match="does not train a DenseNet-121"):
        capacity_method(Method("res", "a ResNet-18", model="resnet18"), 0.5)


@pytest.mark.parametrize("name,message", [
    ("capacity-nope-0.5", "unknown base method 'nope'"),
    ("capacity-baseline-0", "outside"),
    ("capacity-baseline--1", "outside"),
    ("capacity-baseline-20", "outside"),
    ("capacity-baseline-x", "'x' is not a number"),
    ("capacity-baseline-0.50", "not a number written as %g"),
    ("capacity-baseline-inf", "not a number written as %g"),
    ("capacity-baseline", "no base method"),
    ("capacity-capacity-baseline-1-1", "does not train a DenseNet-121"),
])
def test_bad_capacity_names(name, message):
    from sibnet.experiments.methods import get_method

    with pytest.raises(ConfigError, match=message) as info:
        get_method(name)
    assert len(str(info.value).splitlines()) == 1 and name in str(info.value)


def test_parse_capacities():
    from sibnet.experiments.capacity import DEFAULT_CAPACITIES, parse_capacities

    assert parse_capacities(None) == DEFAULT_CAPACITIES == (0.2, 0.5, 1.0, 1.5, 2.0)
    assert parse_capacities("0.5, 1,0.5,2") == (0.5, 1.0, 2.0)
    for bad in ("", "0", "-1", "a", "11"):
        with pytest.raises(ConfigError, match="--capacities"):
            parse_capacities(bad)


# ------------------------------------------------------------------ evaluation loss

def test_weighted_loss_from_probs_equals_the_logits_loss():
    from sibnet.experiments.capacity import weighted_loss_from_probs
    from sibnet.losses.classification import weighted_bce

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 5, generator=g, dtype=torch.float64) * 3
    labels = (torch.rand(40, 5, generator=g) < 0.3).double()
    labels[0, 1], labels[3, 4] = -1, math.nan
    w = torch.tensor([1.0, 2.5, 0.5, 4.0, 1.0], dtype=torch.float64)
    expected = weighted_bce(logits, torch.where(labels == -1, math.nan, labels), w)
    loss, clipped = weighted_loss_from_probs(torch.sigmoid(logits).numpy(), labels.numpy(), w.numpy())
    assert loss == pytest.approx(float(expected), rel=1e-12) and clipped == 0
    # saturated float32 probabilities are clipped and counted
    loss, clipped = weighted_loss_from_probs(np.array([[1.0, 0.0, 0.0]], np.float32), np.array([[0.0, 0.0, 1.0]]),
                                             [1, 1, 2])
    tiny = float(np.finfo(np.float32).tiny)
    assert clipped == 2 and loss == pytest.approx((-math.log(2 ** -24) - 2 * math.log(tiny)) / 3)
    _, imprecise = weighted_loss_from_probs(np.array([[1 - 1e-5, 1 - 1e-3]]), np.array([[0.0, 0.0]]), [1, 1])
    assert imprecise == 1  # -log(1 - p) with 1 - p < 1e-4: float32 p is too coarse there


def test_weighted_loss_from_probs_multiclass():
    from sibnet.experiments.capacity import weighted_loss_from_probs

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(12, 4, generator=g, dtype=torch.float64)
    index = torch.randint(0, 4, (12,), generator=g)
    w = torch.tensor([0.5, 1.0, 2.0, 1.5], dtype=torch.float64)
    expected = F.cross_entropy(logits, index, weight=w, reduction="sum") / 12
    onehot = F.one_hot(index, 4).double().numpy()
    for labels in (index.numpy(), onehot):
        loss, _ = weighted_loss_from_probs(torch.softmax(logits, 1).numpy(), labels, w.numpy(), "multiclass")
        assert loss == pytest.approx(float(expected), rel=1e-12)


# ------------------------------------------------------------------ the study, end to end

def argv(runs: Path, out: Path, extra=()):
    return ["experiment", "capacity", "--dataset", "synthetic", "--image-size", "32", "--folds", "2",
            "--budget", "steps=1", "--batch-size", "8", "--data-option", "n=16", "--methods", "baseline",
            "--capacities", "0.5,1", "--runs", str(runs), "--out", str(out), *extra]


METHODS = ("capacity-baseline-0.5", "capacity-baseline-1")


def job_folders(runs: Path):
    return sorted(runs.glob("*/fold*-seed*"))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    base = tmp_path_factory.mktemp("capacity")
    runs, out = base / "runs", base / "out"
    assert main(argv(runs, out)) == 0
    stamps = {str(p): (p / "last.pt").stat().st_mtime_ns for p in job_folders(runs)}
    return {"runs": runs, "out": out, "stamps": stamps}


def test_files_and_checkpoints(study):
    from sibnet.models.classifier import densenet121_width
    from sibnet.training.checkpoint import load_model_from_checkpoint

    folders = job_folders(study["runs"])
    assert [f"{p.parent.name}/{p.name}" for p in folders] == [f"{m}/fold{f}-seed0" for m in METHODS for f in (0, 1)]
    for name in ("capacity.md", "capacity.csv", "fig12_capacity.png"):
        assert (study["out"] / name).stat().st_size > 0
    for p in folders:
        model, meta = load_model_from_checkpoint(p / "last.pt")  # the scaled model reloads by its name
        m = float(p.parent.name.rsplit("-", 1)[1])
        assert meta["model_name"] == f"densenet121-x{m:g}"
        assert n_params(model) == densenet121_width(m, meta["in_channels"], meta["num_classes"])["parameters"]


def _reference(runs: Path, method: str, fold: int) -> dict:
    """What one job folder holds: last val loss, AUROC, and the evaluation loss of its model re-run."""
    from sibnet.data.registry import build_dataset
    from sibnet.losses.classification import class_weights_from_labels, weighted_bce
    from sibnet.training.checkpoint import load_model_from_checkpoint

    folder = runs / method / f"fold{fold}-seed0"
    done = json.loads((folder / "done.json").read_text())
    lines = (folder / "val_loss.csv").read_text().strip().splitlines()
    val_loss = float(lines[-1].split(",")[2])
    common = dict(image_size=32, fold=fold, folds=2, seed=0, n=16)
    train = build_dataset("synthetic", split="train", **common)
    test = build_dataset("synthetic", split="test", **common)
    assert done["eval_split"] == "test"
    with warnings.catch_warnings():  # a class without positives in 8 images: weight 1 and a warning
        warnings.simplefilter("ignore", UserWarning)
        labels = np.stack([np.asarray(train[i]["label"], np.float32) for i in range(len(train))])
        w = class_weights_from_labels(labels, "multilabel", class_names=train.info.class_names)
    model, _ = load_model_from_checkpoint(folder / "last.pt")
    with torch.no_grad():
        x = torch.stack([test[i]["image"] for i in range(len(test))])
        y = torch.stack([torch.as_tensor(test[i]["label"]) for i in range(len(test))]).float()
        logits = model(x).double()
    y = torch.where(y == -1, torch.full_like(y, math.nan), y).double()
    eval_loss = float(weighted_bce(logits, y, torch.as_tensor(w, dtype=torch.float64)))
    return {"val_loss": val_loss, "eval_loss": eval_loss, "auroc": done["mean_auroc"]}


def test_table_equals_the_job_folders(study):
    header, rows = read_csv_table(study["out"] / "capacity.csv")
    by = {r["method"]: r for r in rows}
    assert list(by) == list(METHODS)
    for method in METHODS:
        refs = [_reference(study["runs"], method, f) for f in (0, 1)]
        r = by[method]
        assert r["runs"] == "2" and r["jobs"] == "2" and r["base_method"] == "baseline"
        for key in ("val_loss", "eval_loss", "auroc"):
            v = [ref[key] for ref in refs]
            assert float(r[f"{key}_mean"]) == pytest.approx(np.mean(v), rel=1e-5), (method, key)
            assert float(r[f"{key}_sd"]) == pytest.approx(np.std(v, ddof=1), rel=1e-4, abs=1e-7), (method, key)
    assert float(by["capacity-baseline-1"]["parameter_ratio"]) == 1.0
    assert abs(float(by["capacity-baseline-0.5"]["parameter_ratio"]) - 0.5) < 0.025
    text = "\n".join(header)
    for needle in ("command: `sibnet experiment capacity --dataset synthetic --image-size 32 --folds 2 --seeds 1 "
                   "--budget steps=1 --methods baseline --capacities 0.5,1", "finished jobs: 4 of 4",
                   "methods: capacity-baseline-0.5, capacity-baseline-1", "evaluation split: test", "code version"):
        assert needle in text, needle
    assert "| baseline | 0.5 | 23 / 45 |" in (study["out"] / "capacity.md").read_text()


def test_eval_loss_from_the_model(study):
    """The fallback for saturated probabilities gives the logits' loss (and the stored probabilities' where
    those are precise)."""
    from sibnet.experiments.capacity import class_weights, eval_loss_from_model, weighted_loss_from_probs
    from sibnet.experiments.study import Job, Study, job_config, parse_budget

    s = Study(dataset="synthetic", runs=study["runs"], budget=parse_budget("steps=1"), image_size=32, folds=2,
              seeds=(0,), batch_size=8, options={"n": 16})
    job = Job("capacity-baseline-0.5", 1, 0)
    cfg = job_config(s, job)
    w, info = class_weights(cfg)
    from_model = eval_loss_from_model(s, job, cfg, w, info.task)
    assert from_model == pytest.approx(_reference(study["runs"], job.method, 1)["eval_loss"], rel=1e-5)
    pred = np.load(job.folder(s) / "predictions.npz")
    from_probs, imprecise = weighted_loss_from_probs(pred["probs"], pred["labels"], w, info.task)
    assert imprecise == 0 and from_probs == pytest.approx(from_model, rel=1e-5)


def test_second_invocation_trains_nothing(study, capsys):
    before = (study["out"] / "capacity.csv").read_text()
    assert main(argv(study["runs"], study["out"])) == 0
    err = capsys.readouterr().err
    assert err.count(": skipped") == 4 and "epoch 1" not in err
    assert {str(p): (p / "last.pt").stat().st_mtime_ns for p in job_folders(study["runs"])} == study["stamps"]
    strip = lambda t: [ln for ln in t.splitlines() if "code version" not in ln]  # noqa: E731
    assert strip((study["out"] / "capacity.csv").read_text()) == strip(before)


def test_report_only_with_nothing_trained(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    assert main(argv(runs, out, extra=("--report-only",))) == 0
    header, rows = read_csv_table(out / "capacity.csv")
    assert [r["runs"] for r in rows] == ["0", "0"] and "finished jobs: 0 of 4" in "\n".join(header)
    assert not (out / "fig12_capacity.png").exists()
    assert not runs.exists() or not any(runs.iterdir())


@pytest.mark.parametrize("args,message", [
    (["--capacities", "0.5,0"], "--capacities"),
    (["--methods", "capacity-baseline-1"], "does not train a DenseNet-121"),
    (["--methods", "nope"], "unknown method 'nope'"),
])
def test_bad_arguments(tmp_path, capsys, args, message):
    base = ["experiment", "capacity", "--dataset", "synthetic", "--runs", str(tmp_path / "r")]
    assert main(base + args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()
