"""``sibnet.monitor``: conformal p-values, batch tests, each score against a direct computation,
the profile's mismatch errors, and ``sibnet monitor fit/check`` end to end."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from scipy import stats
from test_explain import tiny_checkpoint
from testnets import SmallCNN

from sibnet.cli import main
from sibnet.errors import ConfigError, SibnetError
from sibnet.monitor import Monitor, Profile, batch_test, model_fingerprint, p_values
from sibnet.monitor.scores import energy_score, fit_gaussian, mahalanobis_score, msp_score, saliency_scores
from sibnet.monitor.study import aurc, detection_rate


# ------------------------------------------------------------------ conformal p-values and batch tests
def test_conformal_p_values_are_uniform_on_exchangeable_data():
    rng = np.random.default_rng(0)
    p = np.array([p_values(rng.normal(size=99), rng.normal(size=1))[0] for _ in range(2000)])
    assert stats.kstest(p, "uniform").pvalue > 0.01
    assert abs(np.mean(p <= 0.05) - 0.05) < 0.02
    # a shifted new point is not uniform: the same test rejects
    q = np.array([p_values(rng.normal(size=99), rng.normal(1.0, size=1))[0] for _ in range(2000)])
    assert stats.kstest(q, "uniform").pvalue < 1e-6


def test_p_value_formula_and_orientation():
    ref = np.array([1.0, 2.0, 3.0, 4.0])
    # p = (1 + #{ref >= s}) / (n + 1); higher score = more suspicious = smaller p
    assert p_values(ref, [0.0, 2.0, 2.5, 9.0]).tolist() == [1.0, 4 / 5, 3 / 5, 1 / 5]


def test_batch_test_false_alarm_rate_holds_on_clean_data():
    rng = np.random.default_rng(1)
    alarms = [batch_test(rng.normal(size=200), rng.normal(size=16), alpha=0.05)["alarm"] for _ in range(1000)]
    rate = np.mean(alarms)
    assert 0.03 <= rate <= 0.07
    shifted = [batch_test(rng.normal(size=200), rng.normal(0.8, size=16), alpha=0.05)["alarm"] for _ in range(200)]
    assert np.mean(shifted) > 0.8


def test_detection_rate_and_aurc():
    rng = np.random.default_rng(2)
    ref = rng.normal(size=300)
    assert detection_rate(ref, rng.normal(size=300), 16, n_batches=300, seed=0) < 0.1
    assert detection_rate(ref, rng.normal(2.0, size=300), 16, n_batches=100, seed=0) == 1.0
    risk = np.array([0.0, 0.0, 1.0, 1.0])
    # accepting by increasing score: perfect order gives mean(0, 0, 1/3, 1/2)
    assert aurc(np.array([0.1, 0.2, 0.8, 0.9]), risk) == pytest.approx(np.mean([0, 0, 1 / 3, 1 / 2]))
    assert aurc(np.array([0.9, 0.8, 0.2, 0.1]), risk) == pytest.approx(np.mean([1, 1, 2 / 3, 1 / 2]))


# ------------------------------------------------------------------ scores against direct computations
def test_msp_and_energy_by_hand():
    logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 0.0, 4.0]])
    p = 1 / (1 + np.exp(-logits.numpy().astype(np.float64)))
    assert np.allclose(msp_score(logits, "multilabel").numpy(), -np.maximum(p, 1 - p).mean(1))
    f = logits.numpy().astype(np.float64)
    assert np.allclose(energy_score(logits, "multilabel").numpy(), -np.log(np.exp(-f / 2) + np.exp(f / 2)).sum(1))
    e = np.exp(logits.numpy().astype(np.float64))
    assert np.allclose(msp_score(logits, "multiclass").numpy(), -(e / e.sum(1, keepdims=True)).max(1))
    assert np.allclose(energy_score(logits, "multiclass").numpy(), -np.log(e.sum(1)))


def test_mahalanobis_against_numpy():
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 5)) @ rng.normal(size=(5, 5))
    new = rng.normal(size=(7, 5))
    g = fit_gaussian(x, task="multilabel")
    mu = x.mean(0)
    cov = LedoitWolf().fit(x).covariance_
    d = new - mu
    want = np.einsum("nd,de,ne->n", d, np.linalg.inv(cov), d)
    assert np.allclose(mahalanobis_score(new, g), want, rtol=1e-8)
    # multi-class: class means, one covariance of the class-centred features, nearest class
    y = rng.integers(0, 3, size=60)
    gc = fit_gaussian(x, np.eye(3)[y], task="multiclass")
    means = np.stack([x[y == c].mean(0) for c in range(3)])
    centred = x - means[y]
    prec = np.linalg.inv(LedoitWolf(assume_centered=True).fit(centred).covariance_)
    want = np.min([np.einsum("nd,de,ne->n", new - m, prec, new - m) for m in means], axis=0)
    assert np.allclose(mahalanobis_score(new, gc), want, rtol=1e-8)


def test_cd_is_the_pairwise_cosine_of_the_map_embeddings():
    from sibnet import saliency
    from sibnet.models.embedding import penultimate

    torch.manual_seed(0)
    model = SmallCNN(in_channels=1, num_classes=3).train()
    x = torch.rand(4, 1, 16, 16)
    before = model_fingerprint(model)
    got = saliency_scores(model, x, "gradcam", embed_size=None)
    assert model.training and model_fingerprint(model) == before  # no state change, mode restored
    model.eval()
    maps = saliency.get("gradcam")(model, x).detach()
    maps = torch.relu(maps) / (torch.relu(maps).amax(dim=(2, 3), keepdim=True) + 1e-8)
    for b in range(4):
        with torch.no_grad():
            z = penultimate(model, maps[b][:, None]).numpy().astype(np.float64)
        cos = [z[i] @ z[j] / max(np.linalg.norm(z[i]), 1e-8) / max(np.linalg.norm(z[j]), 1e-8)
               for i in range(3) for j in range(i + 1, 3)]
        assert got["cd"][b].item() == pytest.approx(np.mean(cos), abs=1e-5)


def test_sc_is_the_mean_squared_difference_per_same_cluster_pair():
    # two pixels of one cluster side by side, the rest below the threshold: one pair, (1 - 0.5)^2
    from sibnet.losses.coherence import spatial_coherence

    maps = torch.zeros(1, 1, 8, 8)
    maps[0, 0, 3, 3], maps[0, 0, 3, 4] = 1.0, 0.5
    got = spatial_coherence(maps, radius=1, threshold=0.25, reduction="none", scale="pair_mean")
    assert got.item() == pytest.approx(0.25)


# ------------------------------------------------------------------ profile: fit, save, load, mismatches
@pytest.fixture(scope="module")
def fitted():
    torch.manual_seed(0)
    model = SmallCNN(in_channels=1, num_classes=3).eval()
    ref = torch.rand(24, 1, 16, 16)
    return model, Monitor.fit(model, ref, method="gradcam", embed_size=None, batch_size=8)


def test_profile_round_trip_and_scores(fitted, tmp_path):
    model, mon = fitted
    path = mon.save(tmp_path / "p.json")
    again = Monitor.load(path, model)
    for k, v in mon.profile.reference.items():
        assert np.allclose(again.profile.reference[k], v)
    assert again.profile.image_size == [16, 16] and again.profile.channels == 1
    assert again.profile.method == "gradcam" and again.profile.fingerprint == model_fingerprint(model)
    new = torch.rand(5, 1, 16, 16)
    a, b = mon.score(new), again.score(new)
    for k in a["scores"]:
        assert np.allclose(a["scores"][k], b["scores"][k], rtol=1e-5)
        assert ((a["p_values"][k] > 0) & (a["p_values"][k] <= 1)).all()
    verdict = mon.check(new, alpha=0.05)
    assert set(verdict["per_score"]) == set(a["scores"]) and 0 < verdict["p_value"] <= 1


def test_mismatches_are_one_line_errors(fitted, tmp_path):
    model, mon = fitted
    with pytest.raises(ConfigError, match="16x16 images") as e:
        mon.score(torch.rand(2, 1, 20, 20))
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="channels"):
        mon.score(torch.rand(2, 3, 16, 16))
    other = SmallCNN(in_channels=1, num_classes=3)
    with pytest.raises(ConfigError, match="state sha256"):
        Monitor.load(mon.save(tmp_path / "p.json"), other)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SibnetError, match="not a sibnet monitor profile"):
        Profile.load(tmp_path / "bad.json")


# ------------------------------------------------------------------ CLI end to end
@pytest.fixture(scope="module")
def cli_profile(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("monitor")
    ckpt = tiny_checkpoint(tmp / "tiny.pt", n=24)
    profile = tmp / "profile.json"
    assert main(["monitor", "fit", "--checkpoint", str(ckpt), "--out", str(profile), "--device", "cpu"]) == 0
    return tmp, ckpt, profile


def test_cli_fit_and_check(cli_profile, capsys):
    tmp, ckpt, profile = cli_profile
    doc = json.loads(profile.read_text())
    assert doc["source"]["dataset"] == "synthetic" and doc["source"]["split"] == "val"
    assert doc["image_size"] == [32, 32] and doc["channels"] == 1 and doc["n_fit"] + doc["n_calibration"] == 24
    out = tmp / "check"
    rc = main(["monitor", "check", "--profile", str(profile), "--dataset", "synthetic", "--split", "test",
               "--batch-size", "8", "--out", str(out), "--device", "cpu", "--top", "2"])
    assert rc == 0
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert len(rows) == 24 and {"cd", "sc", "msp", "energy", "mahalanobis", "p:mahalanobis"} <= set(rows[0])
    alarms = json.loads((out / "alarms.json").read_text())
    assert len(alarms["batches"]) == 3 and alarms["n_images"] == 24
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64") == 3 and "http" not in html.split("<body>")[1]
    assert "3 batches" in capsys.readouterr().out


def test_cli_check_errors(cli_profile, tmp_path, capsys):
    tmp, ckpt, profile = cli_profile
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    assert main(["monitor", "check", "--profile", str(profile), "--images", str(empty), "--out", str(out)]) == 2
    assert "no image files" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"not a png")
    assert main(["monitor", "check", "--profile", str(profile), "--images", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "a.png" in err and err.count("\n") == 1
    (bad / "a.png").unlink()
    import PIL.Image

    PIL.Image.fromarray(np.zeros((40, 40), np.uint8)).save(bad / "b.png")
    assert main(["monitor", "check", "--profile", str(profile), "--images", str(bad), "--out",
                 str(bad / "out")]) == 2
    assert "inside the dataset folder" in capsys.readouterr().err and not (bad / "out").exists()
    assert main(["monitor", "check", "--profile", str(profile), "--dataset", "synthetic", "--out", str(out),
                 "image_size=48"]) == 2
    assert "48x48" in capsys.readouterr().err
    other = tiny_checkpoint(tmp_path / "other.pt", n=24, seed=5)
    assert main(["monitor", "check", "--profile", str(profile), "--checkpoint", str(other), "--dataset",
                 "synthetic", "--out", str(out)]) == 2
    assert "state sha256" in capsys.readouterr().err
    assert not out.exists()  # nothing written by a failed check


def test_study_tables_from_monitor_json(tmp_path):
    from sibnet.monitor import SCORES

    def result(kind, seed, auc):
        rates = {sc: {"16": 0.05, "64": 0.04} for sc in SCORES}
        return {"kind": kind, "checkpoint": f"{kind}{seed}.pt", "error_rate": 0.5,
                "auroc": {"noise:0.1": {sc: auc + 0.01 * seed for sc in SCORES}},
                "detection": {"clean": rates, "noise:0.1": rates},
                "failure": {**{sc: {"auroc": 0.6, "aurc": 0.2} for sc in SCORES}, "oracle_aurc": 0.05}}

    study = {"command": "sibnet monitor study ...", "code": "test", "method": "gradcam", "alpha": 0.05,
             "n_shifted": 8, "n_batches": 10, "shifts": ["noise:0.1"],
             "results": [result("baseline", s, 0.6) for s in range(2)] + [result("sibnet", s, 0.7) for s in range(2)]}
    (tmp_path / "monitor.json").write_text(json.dumps(study))
    assert main(["monitor", "study", "--report-only", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "monitor.md").read_text()
    assert "baseline: 2 model(s), sibnet: 2 model(s)" in md and "rewritten from monitor.json" in md
    assert "| noise:0.1 | 0.60 [0.60, 0.61] |" in md  # mean [min, max] of 0.60 and 0.61
    assert "Difference sibnet - baseline" in md and "+0.10" in md
    assert main(["monitor", "study", "--report-only", "--out", str(tmp_path / "none")]) == 2
