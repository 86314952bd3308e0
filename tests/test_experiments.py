"""sibnet experiment: a tiny end-to-end table1 on synthetic data (2 methods x 2 folds x 1 seed).

Checks the files, that a second invocation re-runs nothing, the numbers against
scikit-learn and ``sibnet.evaluation.statistics``, the header, and the evaluation tables that
reuse the trained jobs (table4/table5) without training again.
"""

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from sibnet.cli import main
from sibnet.evaluation.statistics import mean_sd, paired_difference
from sibnet.experiments.tables import read_csv_table

torch.set_num_threads(1)

METHODS = ("baseline", "sibnet-gradcam")


def argv(runs: Path, out: Path, table="table1", budget="steps=1", extra=()):
    return [ "experiment", table, "--dataset", "synthetic", "--image-size", "32", "--folds", "2", "--seeds", "1",
             "--budget", budget, "--batch-size", "8", "--data-option", "n=16", "--methods", ",".join(METHODS),
             "--runs", str(runs), "--out", str(out), *extra]


def job_files(runs: Path):
    return sorted(runs.glob("*/fold*-seed*"))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    base = tmp_path_factory.mktemp("exp")
    runs, out = base / "runs", base / "tables"
    assert main(argv(runs, out)) == 0
    stamps = {str(p): (p / "last.pt").stat().st_mtime_ns for p in job_files(runs)}
    return {"runs": runs, "out": out, "stamps": stamps}


def test_files(study):
    runs, out = study["runs"], study["out"]
    folders = job_files(runs)
    assert [f"{p.parent.name}/{p.name}" for p in folders] == sorted(
        f"{m}/fold{f}-seed0" for m in METHODS for f in (0, 1))
    for p in folders:
        for name in ("job.yaml", "config.yaml", "last.pt", "metrics.csv", "val_loss.csv", "done.json",
                     "predictions.npz"):
            assert (p / name).is_file(), (p, name)
        assert not (p / "running.lock").exists()
        done = json.loads((p / "done.json").read_text())
        assert done["state"] == {"epochs": 1, "steps": 1}
        assert done["method"] == p.parent.name and done["eval_split"] == "test" and done["n_eval"] == 16
    for name in ("table1.md", "table1.csv", "fig3_auroc_box.png", "fig4_curves.png", "fig5_per_label_auroc.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0


def test_second_invocation_runs_nothing(study, capsys):
    assert main(argv(study["runs"], study["out"])) == 0
    err = capsys.readouterr().err
    assert err.count(": skipped") == 4 and "epoch 1" not in err
    assert {str(p): (p / "last.pt").stat().st_mtime_ns for p in job_files(study["runs"])} == study["stamps"]
    assert main(argv(study["runs"], study["out"], table="status")) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all(ln.startswith("done") and "(1 epoch(s) finished; best val AUROC" in ln
                                   for ln in lines)
    import csv

    for ln in lines:  # the best validation AUROC as the job's metrics.csv has it; the maps' cosine for SIBNet
        key = ln.split()[1]
        rows = list(csv.DictReader(open(study["runs"] / key / "metrics.csv")))
        assert f"best val AUROC {float(rows[0]['val_auroc']):.4f} at epoch 1" in ln
        assert ("class-map cosine" in ln) == key.startswith("sibnet")


def test_metrics_against_sklearn(study):
    for p in job_files(study["runs"]):
        done = json.loads((p / "done.json").read_text())
        pred = np.load(p / "predictions.npz")
        aurocs, aps = [], []
        for j, name in enumerate(done["class_names"]):
            y = pred["labels"][:, j]
            if y.min() == y.max():
                assert done["per_label"][name]["auroc"] is None
                continue
            a, ap = roc_auc_score(y, pred["probs"][:, j]), average_precision_score(y, pred["probs"][:, j])
            assert done["per_label"][name]["auroc"] == pytest.approx(a)
            assert done["per_label"][name]["auprc"] == pytest.approx(ap)
            aurocs.append(a)
            aps.append(ap)
        assert done["mean_auroc"] == pytest.approx(np.mean(aurocs))
        assert done["mean_auprc"] == pytest.approx(np.mean(aps))


def _per_run(runs: Path, method: str, key: str) -> list[float]:
    return [json.loads((runs / method / f"fold{f}-seed0" / "done.json").read_text())[key] for f in (0, 1)]


def test_statistics_against_evaluation_module(study):
    header, rows = read_csv_table(study["out"] / "table1.csv")
    by = {r["method"]: r for r in rows}
    assert set(by) == set(METHODS)
    for m in METHODS:
        for key, col in (("mean_auroc", "auroc"), ("mean_auprc", "auprc")):
            v = _per_run(study["runs"], m, key)
            assert float(by[m][f"{col}_mean"]) == pytest.approx(np.mean(v))
            assert float(by[m][f"{col}_sd"]) == pytest.approx(np.std(v, ddof=1))
    for key, col in (("mean_auroc", "auroc"), ("mean_auprc", "auprc")):
        d = paired_difference(_per_run(study["runs"], "sibnet-gradcam", key), _per_run(study["runs"], "baseline", key))
        r = by["sibnet-gradcam"]
        assert float(r[f"diff_{col}"]) == pytest.approx(d["mean_diff"])
        assert float(r[f"diff_{col}_lo"]) == pytest.approx(d["ci"][0])
        assert float(r[f"diff_{col}_hi"]) == pytest.approx(d["ci"][1])
        assert int(r[f"pairs_{col}"]) == 2
        if math.isnan(d["p_wilcoxon"]):  # both differences zero
            assert r[f"p_{col}"] == ""
        else:  # exact Wilcoxon p of 2 pairs: 0.5 (one sign) or 1.0
            assert float(r[f"p_{col}"]) == pytest.approx(d["p_wilcoxon"]) and d["p_wilcoxon"] in (0.5, 1.0)
    md = (study["out"] / "table1.md").read_text()
    assert f"| baseline | 2/2 | {mean_sd(_per_run(study['runs'], 'baseline', 'mean_auroc'))} |" in md


def test_reference_method_takes_the_place_of_the_baseline(study, tmp_path, capsys):
    out = tmp_path / "vs-sibnet"
    assert main(argv(study["runs"], out, extra=("--report-only", "--reference", "sibnet-gradcam"))) == 0
    header, rows = read_csv_table(out / "table1.csv")
    by = {r["method"]: r for r in rows}
    d = paired_difference(_per_run(study["runs"], "baseline", "mean_auroc"),
                          _per_run(study["runs"], "sibnet-gradcam", "mean_auroc"))
    assert float(by["baseline"]["diff_auroc"]) == pytest.approx(d["mean_diff"])
    assert by["sibnet-gradcam"]["diff_auroc"] == ""
    md = (out / "table1.md").read_text()
    assert "ΔAUROC vs sibnet-gradcam [95% CI]" in md and "--reference sibnet-gradcam" in md
    assert "paired differences against sibnet-gradcam (--reference), not the baseline" in md
    assert main(argv(study["runs"], out, extra=("--report-only", "--reference", "no-cd"))) == 2
    err = capsys.readouterr().err
    assert "--reference 'no-cd': table1 and table3 only, and one of --methods (baseline, sibnet-gradcam)" in err


def test_header(study):
    header, _ = read_csv_table(study["out"] / "table1.csv")
    text = "\n".join(header)
    md = (study["out"] / "table1.md").read_text()
    version = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).parent,
                             capture_output=True, text=True).stdout.strip()
    for needle in ("command: `sibnet experiment table1 --dataset synthetic --image-size 32 --folds 2 --seeds 1",
                   "--budget steps=1", "dataset: synthetic", "image size: 32 px", "budget: steps=1 per job",
                   "2 patient-wise folds x seeds [0]", "finished jobs: 4 of 4",
                   "evaluation split: test (16 images per run)"):
        assert needle in text and needle in md, needle
    if version:
        assert f"code version: git {version[:7]}" in text


def test_code_version_is_dirty_for_code_changes_only(tmp_path, monkeypatch):
    """Result files written into the repository do not mark the code dirty; a changed source does."""
    from sibnet.experiments import tables

    if subprocess.run(["git", "--version"], capture_output=True).returncode != 0:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    (repo / "src" / "sibnet" / "experiments").mkdir(parents=True)
    (repo / "docs").mkdir()
    fake = repo / "src" / "sibnet" / "experiments" / "tables.py"
    fake.write_text("x = 1\n")
    (repo / "docs" / "table1.md").write_text("old\n")

    def git(*args):
        subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=repo, check=True,
                       capture_output=True)

    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "init")
    monkeypatch.setattr(tables, "__file__", str(fake))
    assert "-dirty" not in tables.code_version()
    (repo / "docs" / "table1.md").write_text("new\n")  # a result file rewritten
    assert "-dirty" not in tables.code_version()
    fake.write_text("x = 2\n")  # the code changed
    assert tables.code_version().split()[1].endswith("-dirty")


@pytest.mark.slow
def test_noise_and_probe_tables_reuse_the_jobs(study):
    stamps = study["stamps"]
    extra = ("--sigmas", "0,0.1")
    assert main(argv(study["runs"], study["out"], table="table4", extra=extra)) == 0
    assert main(argv(study["runs"], study["out"], table="table5", extra=("--probes", "linear_svm"))) == 0
    assert {str(p): (p / "last.pt").stat().st_mtime_ns for p in job_files(study["runs"])} == stamps
    _, rows4 = read_csv_table(study["out"] / "table4.csv")
    for r in rows4:  # sigma = 0 is the clean evaluation of table 1
        assert float(r["auroc_sigma_0.0"]) == pytest.approx(np.mean(_per_run(study["runs"], r["method"], "mean_auroc")))
    _, rows5 = read_csv_table(study["out"] / "table5.csv")
    assert {r["method"] for r in rows5} == set(METHODS) and all(r["auroc_linear_svm"] for r in rows5)


def test_noise_table_with_batchnorm_statistics_re_estimated(study):
    """--bn-stats train: each model's BatchNorm statistics re-estimated on its fold's training split
    before evaluation; checked against a direct computation, cached beside the stored-stats results."""
    from sibnet.data.registry import build_dataset
    from sibnet.evaluation.batchnorm import recalibrate_batchnorm
    from sibnet.evaluation.classification import classification_metrics
    from sibnet.evaluation.run import metric_labels
    from sibnet.training.checkpoint import load_model_from_checkpoint

    out = study["out"] / "bn-train"
    assert main(argv(study["runs"], out, table="table4", extra=("--sigmas", "0", "--bn-stats", "train"))) == 0
    assert {str(p): (p / "last.pt").stat().st_mtime_ns for p in job_files(study["runs"])} == study["stamps"]
    header, rows = read_csv_table(out / "table4.csv")
    text = "\n".join(header)
    assert "--bn-stats train" in text and "re-estimated with the final weights" in text
    assert all((p / "noise.bn-train.json").is_file() for p in job_files(study["runs"]))
    test = build_dataset("synthetic", split="test", image_size=32, fold=0, folds=2, seed=0, n=16)
    loader = torch.utils.data.DataLoader(test, batch_size=16)
    batch = next(iter(loader))
    y, _ = metric_labels(batch["label"].numpy())
    by = {r["method"]: r for r in rows}
    for m in METHODS:
        scores, stored = [], []
        for f in (0, 1):
            model, meta = load_model_from_checkpoint(study["runs"] / m / f"fold{f}-seed0" / "last.pt")
            model.eval()
            with torch.no_grad():
                stored.append(model(batch["image"]))
            train = build_dataset("synthetic", split="train", image_size=32, fold=f, folds=2, seed=0, n=16)
            recalibrate_batchnorm(model, train, batch_size=8, seed=0)
            with torch.no_grad():
                logits = model(batch["image"])
            assert not torch.allclose(logits, stored[-1])  # the statistics did change
            met = classification_metrics(torch.sigmoid(logits).numpy(), y, class_names=meta["class_names"], n_boot=0)
            scores.append(met["mean"]["auroc"])
        assert float(by[m]["auroc_sigma_0.0"]) == pytest.approx(np.mean(scores))


@pytest.mark.parametrize("args,message", [
    (["--budget", "epochs=0"], "--budget"),
    (["--budget", "minutes=3"], "--budget"),
    (["--methods", "baseline,nope"], "unknown method 'nope'"),
    (["--seeds", "0"], "--seeds"),
])
def test_bad_arguments(tmp_path, capsys, args, message):
    base = ["experiment", "table1", "--dataset", "synthetic", "--runs", str(tmp_path / "r")]
    assert main(base + args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()


def _tiny_study(runs: Path, budget: str, batch_size: int = 8):
    from sibnet.experiments.study import Study, parse_budget

    return Study(dataset="synthetic", runs=runs, budget=parse_budget(budget), image_size=32, folds=2, seeds=(0,),
                 batch_size=batch_size, options={"n": 16})


def test_larger_budget_continues_smaller_is_refused(tmp_path):
    from sibnet.errors import SibnetError
    from sibnet.experiments.runner import run_job
    from sibnet.experiments.store import job_status, read_val_loss
    from sibnet.experiments.study import Job

    job = Job("baseline", 0, 0)
    one = _tiny_study(tmp_path, "epochs=1")
    assert job_status(one, job) == "pending"
    r1 = run_job(one, job, log=lambda m: None)
    assert r1["status"] == "trained" and r1["state"] == {"epochs": 1, "steps": 1}
    first = (job.folder(one) / "metrics.csv").read_text().splitlines()
    two = _tiny_study(tmp_path, "epochs=2")
    assert job_status(two, job) == "partial"
    r2 = run_job(two, job, log=lambda m: None)
    assert r2["state"] == {"epochs": 2, "steps": 2}
    rows = (job.folder(two) / "metrics.csv").read_text().splitlines()
    assert rows[:2] == first and len(rows) == 3  # epoch 1 kept, epoch 2 added
    assert [r["epoch"] for r in read_val_loss(job.folder(two))] == [1, 2]
    assert run_job(two, job)["status"] == "skipped"
    with pytest.raises(SibnetError, match="smaller budget"):
        run_job(one, job)
    with pytest.raises(SibnetError, match="other settings.*batch_size: 8 there, 4 now"):
        run_job(_tiny_study(tmp_path, "epochs=2", batch_size=4), job)


def test_job_saved_before_a_setting_existed_continues(tmp_path):
    import yaml

    from sibnet.errors import SibnetError
    from sibnet.experiments.runner import run_job
    from sibnet.experiments.study import Job

    job = Job("sibnet-gradcam", 0, 0)
    one = _tiny_study(tmp_path, "steps=1")
    run_job(one, job, log=lambda m: None)
    # the job's record as an older version wrote it: without loss.sc_scale
    path = job.folder(one) / "job.yaml"
    record = yaml.safe_load(path.read_text())
    del record["config"]["loss"]["sc_scale"]
    path.write_text(yaml.safe_dump(record))
    assert run_job(_tiny_study(tmp_path, "steps=2"), job, log=lambda m: None)["status"] == "trained"
    # a setting that really differs is still refused
    record["config"]["loss"]["sc_scale"] = "pair_mean"
    path.write_text(yaml.safe_dump(record))
    with pytest.raises(SibnetError, match="other settings.*sc_scale: 'pair_mean' there, 'sum' now"):
        run_job(_tiny_study(tmp_path, "steps=3"), job, log=lambda m: None)


def test_locks(tmp_path):
    import os

    from sibnet.experiments.store import acquire_lock, release_lock

    (tmp_path / "running.lock").write_text(str(os.getppid()))  # a live process holds it
    assert not acquire_lock(tmp_path)
    (tmp_path / "running.lock").write_text("999999999")  # a dead one: taken over
    assert acquire_lock(tmp_path)
    assert (tmp_path / "running.lock").read_text() == str(os.getpid())
    release_lock(tmp_path)
    assert not (tmp_path / "running.lock").exists()


def test_budget_parsing():
    from sibnet.experiments.study import Budget, parse_budget

    assert parse_budget("epochs=3") == Budget(3, None)
    assert parse_budget("steps=200") == Budget(None, 200)
    assert parse_budget("epochs=3, steps=200") == Budget(3, 200)
    assert str(Budget(3, 200)) == "epochs=3,steps=200"
    assert Budget(4, None).covers(Budget(3, None)) and not Budget(2, None).covers(Budget(3, None))
    assert not Budget(3, None).covers(Budget(None, 10)) and Budget(None, None).covers(Budget(3, 5))


def test_checkpoint_frequency_is_the_callers_where_given(tmp_path):
    import dataclasses

    from sibnet.config import diff_configs
    from sibnet.experiments.study import CHECKPOINT_EVERY, FREE_KEYS, Job, job_config, job_identity

    study = _tiny_study(tmp_path / "runs", "epochs=1")
    job = Job("sibnet-pair-mean", 0, 0)
    assert job_config(study, job).train.checkpoint_every == CHECKPOINT_EVERY
    assert job_config(study, job).loss.sc_scale == "pair_mean"
    rare = dataclasses.replace(study, overrides=("train.checkpoint_every=200",))
    assert job_config(rare, job).train.checkpoint_every == 200
    # a setting that does not change results: the job stays the same job
    changed = diff_configs(job_identity(rare, job, job_config(rare, job)),
                           job_identity(study, job, job_config(study, job)))
    assert changed == ["config.train.checkpoint_every"] and "train.checkpoint_every" in FREE_KEYS


@pytest.mark.slow
def test_epoch_by_epoch_equals_one_continuous_run(tmp_path):
    """The job's per-epoch resume gives the same weights as one uninterrupted trainer run."""
    from sibnet.experiments.runner import run_job
    from sibnet.experiments.study import Job, job_config
    from sibnet.training import Trainer
    from sibnet.training.checkpoint import load_checkpoint

    study = _tiny_study(tmp_path / "runs", "epochs=3")
    job = Job("sibnet-gradcam", 1, 0)
    run_job(study, job, log=lambda m: None)
    cfg = job_config(study, job)
    cfg.out = str(tmp_path / "direct")
    Trainer(cfg).fit()
    a = load_checkpoint(job.folder(study) / "last.pt")
    b = load_checkpoint(tmp_path / "direct" / "last.pt")
    assert a["state"]["step"] == b["state"]["step"] == 3
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k


@pytest.mark.slow
def test_parallel_jobs(tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "out"
    assert main(argv(runs, out, extra=("--jobs", "2"))) == 0
    assert len([p for p in job_files(runs) if (p / "done.json").is_file()]) == 4


def test_agreement_table_against_direct_computation(study):
    from sibnet.data.registry import build_dataset
    from sibnet.evaluation.agreement import saliency_agreement
    from sibnet.evaluation.run import compute_maps
    from sibnet.training.checkpoint import load_model_from_checkpoint

    stamps = study["stamps"]
    assert main(argv(study["runs"], study["out"], table="table3", extra=("--max-maps", "6"))) == 0
    assert {str(p): (p / "last.pt").stat().st_mtime_ns for p in job_files(study["runs"])} == stamps
    header, rows = read_csv_table(study["out"] / "table3.csv")
    assert any("maps: deep_taylor for every model" in h for h in header)
    test = build_dataset("synthetic", split="test", image_size=32, fold=1, folds=2, seed=0, n=16)
    dice = {}
    for m in METHODS:
        per_run = []
        for f in (0, 1):
            model, meta = load_model_from_checkpoint(study["runs"] / m / f"fold{f}-seed0" / "last.pt")
            maps = compute_maps(model, test, "deep_taylor", range(6))
            agr = saliency_agreement(maps["maps"], maps["masks"], maps["labels"], class_names=meta["class_names"])
            per_run.append(agr["mean"]["dice"])
        dice[m] = per_run
    by = {r["method"]: r for r in rows}
    for m in METHODS:
        assert float(by[m]["dice"]) == pytest.approx(np.mean(dice[m]))
    d = paired_difference(dice["sibnet-gradcam"], dice["baseline"])
    assert float(by["sibnet-gradcam"]["diff_dice"]) == pytest.approx(d["mean_diff"])
    # --reference: the paired Dice differences against another method (the cached maps, no recomputation)
    vs = study["out"] / "vs-gradcam-3"
    ref = ("--max-maps", "6", "--reference", "sibnet-gradcam")
    assert main(argv(study["runs"], vs, table="table3", extra=ref)) == 0
    _, rows_vs = read_csv_table(vs / "table3.csv")
    by_vs = {r["method"]: r for r in rows_vs}
    assert float(by_vs["baseline"]["diff_dice"]) == pytest.approx(-d["mean_diff"]) and by_vs["sibnet-gradcam"][
        "diff_dice"] == ""
    md = (vs / "table3.md").read_text()
    assert "ΔDice vs sibnet-gradcam [95% CI]" in md and "--reference sibnet-gradcam" in md
    # with re-estimated BatchNorm statistics: the maps of the recalibrated models, cached beside
    from sibnet.evaluation.batchnorm import recalibrate_batchnorm

    out = study["out"] / "bn-train-3"
    assert main(argv(study["runs"], out, table="table3", extra=("--max-maps", "6", "--bn-stats", "train"))) == 0
    assert all((p / "agreement-deep_taylor.bn-train.json").is_file() and (p / "agreement-deep_taylor.json").is_file()
               for p in job_files(study["runs"]))
    _, rows = read_csv_table(out / "table3.csv")
    model, meta = load_model_from_checkpoint(study["runs"] / "baseline" / "fold0-seed0" / "last.pt")
    train = build_dataset("synthetic", split="train", image_size=32, fold=0, folds=2, seed=0, n=16)
    recalibrate_batchnorm(model, train, batch_size=8, seed=0)
    maps = compute_maps(model, test, "deep_taylor", range(6))
    fold0 = saliency_agreement(maps["maps"], maps["masks"], maps["labels"], class_names=meta["class_names"])
    got = json.loads((study["runs"] / "baseline" / "fold0-seed0" / "agreement-deep_taylor.bn-train.json").read_text())
    assert got["last"]["dice"] == pytest.approx(fold0["mean"]["dice"])
    assert {r["method"] for r in rows} == set(METHODS)


def test_lambda_grid(tmp_path):
    from sibnet.experiments.methods import get_method
    from sibnet.experiments.study import job_config

    m = get_method("sibnet-lambda-0.5-2")
    assert m.overrides == {"loss.saliency": "deep_taylor", "loss.lambda_cd": 0.5, "loss.lambda_sc": 2.0}
    with pytest.raises(Exception, match="sibnet-lambda-"):
        get_method("sibnet-lambda-0.50-x")
    runs, out = tmp_path / "runs", tmp_path / "out"
    base = ["experiment", "lambda-grid", "--dataset", "synthetic", "--image-size", "32", "--folds", "2",
            "--budget", "steps=1", "--batch-size", "8", "--data-option", "n=16", "--lambdas", "0,1.5",
            "--runs", str(runs), "--out", str(out), "--report-only"]
    assert main(base) == 0  # nothing trained yet: an empty grid
    from sibnet.experiments.study import Job
    from sibnet.experiments.tables import read_csv_table

    header, rows = read_csv_table(out / "lambda_grid.csv")
    assert [(float(r["lambda_cd"]), float(r["lambda_sc"])) for r in rows] == [(0, 0), (1.5, 0), (0, 1.5), (1.5, 1.5)]
    assert all(r["runs"] == "0" for r in rows) and "finished jobs: 0 of 8" in "\n".join(header)
    cfg = job_config(_tiny_study(runs, "steps=1"), Job("sibnet-lambda-1.5-0", 0, 0))
    assert (cfg.loss.lambda_cd, cfg.loss.lambda_sc, cfg.loss.saliency) == (1.5, 0.0, "deep_taylor")
    assert not runs.exists() or not any(runs.iterdir())


def test_lambda_grid_of_another_base_method(tmp_path):
    """--methods names the grid's base method: its settings are kept and only the lambdas vary."""
    from sibnet.errors import ConfigError
    from sibnet.experiments.methods import get_method
    from sibnet.experiments.study import Job, job_config
    from sibnet.experiments.tables import read_csv_table

    m = get_method("sibnet-gradcam-gradient-lambda-0.5-2")
    assert m.overrides == {**get_method("sibnet-gradcam-gradient").overrides, "loss.lambda_cd": 0.5,
                           "loss.lambda_sc": 2.0}
    for bad, why in (("baseline-lambda-1-1", "must be a SIBNet method"), ("warm-sibnet-lambda-1-1", "from scratch"),
                     ("nope-lambda-1-1", "not one"), ("sibnet-gradcam-lambda-1-x", "numbers >= 0")):
        with pytest.raises(ConfigError, match=why):
            get_method(bad)
    runs, out = tmp_path / "runs", tmp_path / "out"
    base = ["experiment", "lambda-grid", "--dataset", "synthetic", "--image-size", "32", "--folds", "2",
            "--budget", "steps=1", "--batch-size", "8", "--data-option", "n=16", "--lambdas", "0,1",
            "--runs", str(runs), "--out", str(out), "--report-only"]
    assert main(base + ["--methods", "sibnet-gradcam-gradient"]) == 0
    header, rows = read_csv_table(out / "lambda_grid.csv")
    text = "\n".join(header)
    assert "of sibnet-gradcam-gradient" in text and "--methods sibnet-gradcam-gradient" in text and len(rows) == 4
    cfg = job_config(_tiny_study(runs, "steps=1"), Job("sibnet-gradcam-gradient-lambda-1-0", 0, 0))
    assert (cfg.loss.lambda_cd, cfg.loss.lambda_sc, cfg.loss.saliency, cfg.loss.balance) == (1.0, 0.0, "gradcam",
                                                                                              "gradient")
    assert main(base + ["--methods", "sibnet,sibnet-gradcam"]) == 2


def test_identity_ignores_unused_loss_settings_of_the_baseline(tmp_path):
    import yaml

    from sibnet.errors import SibnetError
    from sibnet.experiments.store import check_job_record
    from sibnet.experiments.study import Job, job_config, job_identity

    study = _tiny_study(tmp_path, "epochs=1")
    for method, should_fail in (("baseline", False), ("sibnet", True)):
        job = Job(method, 0, 0)
        ident = job_identity(study, job, job_config(study, job))
        old = yaml.safe_load(yaml.safe_dump(ident))
        old["config"]["loss"]["embed_size"] = 999  # a setting the baseline never uses
        old["config"]["train"]["checkpoint_every"] = 0  # never part of a job's identity
        folder = job.folder(study)
        folder.mkdir(parents=True)
        (folder / "job.yaml").write_text(yaml.safe_dump(old))
        if should_fail:
            with pytest.raises(SibnetError, match="config.loss.embed_size"):
                check_job_record(folder, ident)
        else:
            check_job_record(folder, ident)


def test_own_splits_early_stopping_and_warm_start(tmp_path, monkeypatch):
    """--folds 1: the dataset's own train/val/test splits; --patience: early stopping, best.pt evaluated;
    warm-baseline starts from the finished baseline job's best.pt (and only at its first epoch)."""
    import sibnet.experiments.runner as runner
    from sibnet.experiments.study import Job, Study, parse_budget
    from sibnet.training import load_checkpoint
    from sibnet.training.checkpoint import load_model_from_checkpoint

    runs, out = tmp_path / "runs", tmp_path / "tables"
    args = ["experiment", "table1", "--dataset", "synthetic", "--image-size", "32", "--folds", "1", "--seeds", "1",
            "--budget", "epochs=3", "--patience", "1", "--batch-size", "8", "--data-option", "n=16",
            "--runs", str(runs), "--out", str(out)]
    # the warm job alone first: its baseline is not finished, so it fails with a message saying so
    assert main(args + ["--methods", "warm-baseline", "--report-only"]) == 0
    with pytest.raises(Exception, match="not finished yet: run 'baseline' first"):
        runner.run_job(Study(dataset="synthetic", runs=runs, budget=parse_budget("epochs=3"), image_size=32,
                             folds=1, batch_size=8, options={"n": 16}, patience=1),
                       Job("warm-baseline", 0, 0))
    calls = []
    real = runner.warm_start_weights

    def spy(study, job):
        calls.append(job.key)
        weights = real(study, job)
        calls.append(weights)
        return weights

    monkeypatch.setattr(runner, "warm_start_weights", spy)
    assert main(args + ["--methods", "baseline,warm-baseline"]) == 0
    base = runs / "baseline" / "fold0-seed0"
    done = json.loads((base / "done.json").read_text())
    assert done["checkpoint"] == "best.pt" and done["eval_split"] == "test" and done["n_eval"] == 16
    cfg = load_checkpoint(base / "last.pt")["config"]
    assert cfg["data"]["fold"] is None and cfg["train"]["patience"] == 1
    state = load_checkpoint(base / "last.pt")["state"]
    best = load_checkpoint(base / "best.pt")["state"]["epoch"]
    assert state["epoch"] == 3 or state["stop_reason"].startswith("early stopping")
    # the evaluated probabilities are best.pt's on the official test split
    from sibnet.data.registry import build_dataset
    from sibnet.evaluation.run import predict

    model, meta = load_model_from_checkpoint(base / "best.pt")
    pred = predict(model, build_dataset("synthetic", split="test", image_size=32, seed=0, n=16), meta["task"])
    assert np.allclose(np.load(base / "predictions.npz")["probs"], pred.probs, atol=1e-6)
    assert best >= 1
    # warm start: called once, with the baseline's best.pt weights
    assert calls[0] == "warm-baseline/fold0-seed0" and len(calls) == 2
    baseline_best = load_checkpoint(base / "best.pt")["model"]
    assert all(torch.equal(calls[1][k], baseline_best[k]) for k in baseline_best)
    warm = runs / "warm-baseline" / "fold0-seed0"
    import yaml

    assert yaml.safe_load((warm / "job.yaml").read_text())["warm_start"] == "baseline/fold0-seed0/best.pt"
    assert "early stopping after 1 epochs" in (out / "table1.md").read_text()


def test_warm_budget_applies_to_warm_started_jobs_only(tmp_path, capsys):
    """--warm-budget: the warm-started jobs fine-tune for their own budget while the others keep --budget;
    the baseline stays finished, the header says both, and a larger warm budget continues the warm job."""
    from sibnet.training import load_checkpoint

    runs, out = tmp_path / "runs", tmp_path / "tables"
    args = ["experiment", "table1", "--dataset", "synthetic", "--image-size", "32", "--folds", "1", "--seeds", "1",
            "--budget", "epochs=2", "--batch-size", "8", "--data-option", "n=16", "--runs", str(runs),
            "--out", str(out), "--methods", "baseline,warm-baseline"]
    assert main(args + ["--warm-budget", "epochs=1"]) == 0
    base, warm = runs / "baseline" / "fold0-seed0", runs / "warm-baseline" / "fold0-seed0"
    assert load_checkpoint(base / "last.pt")["state"]["epoch"] == 2
    assert load_checkpoint(warm / "last.pt")["state"]["epoch"] == 1
    assert json.loads((warm / "done.json").read_text())["budget"] == "epochs=1"
    assert json.loads((base / "done.json").read_text())["budget"] == "epochs=2"
    text = (out / "table1.md").read_text()
    assert "budget: epochs=2; warm-started jobs epochs=1 per job" in text and "--warm-budget epochs=1" in text
    assert "- objectives: baseline, warm-baseline: weighted BCE/CE alone\n" in text
    base_mtime = (base / "done.json").stat().st_mtime_ns
    assert main(args + ["--warm-budget", "epochs=2"]) == 0  # the warm job continues, the baseline is kept
    assert load_checkpoint(warm / "last.pt")["state"]["epoch"] == 2
    assert (base / "done.json").stat().st_mtime_ns == base_mtime
    assert main(args + ["--warm-budget", "epochs=0"]) == 2
    assert "--warm-budget: expected epochs=N" in capsys.readouterr().err
    # warm-baseline-lr<x>: the same warm start with its own Adam learning rate, beside the baseline it starts from
    lr_args = [a if a != "baseline,warm-baseline" else "baseline,warm-baseline-lr0.0001" for a in args]
    assert main(lr_args + ["--warm-budget", "epochs=1"]) == 0
    lr_job = runs / "warm-baseline-lr0.0001" / "fold0-seed0"
    ckpt = load_checkpoint(lr_job / "last.pt")
    assert ckpt["config"]["optim"]["lr"] == 1e-4 and ckpt["state"]["epoch"] == 1
    assert load_checkpoint(warm / "last.pt")["config"]["optim"]["lr"] == 1e-3
    assert "warm-baseline-lr0.0001" in (out / "table1.md").read_text()
    assert (base / "done.json").stat().st_mtime_ns == base_mtime


def test_warm_lr_methods():
    from sibnet.errors import ConfigError
    from sibnet.experiments.methods import METHODS, get_method, warm_lr_method

    m = get_method("warm-sibnet-lr0.0001")
    assert m.warm_start == "baseline" and m.overrides == {**METHODS["warm-sibnet"].overrides, "optim.lr": 1e-4}
    assert warm_lr_method("warm-baseline", 3e-5).name == "warm-baseline-lr3e-05"
    for bad in ("warm-sibnet-lr1e-4", "warm-sibnet-lrx", "warm-sibnet-lr", "warm-sibnet-lr-0.1", "warm-sibnet-lr0"):
        with pytest.raises(ConfigError, match="warm-sibnet-lr"):
            get_method(bad)
    with pytest.raises(ConfigError, match="'sibnet' is not a warm-started method"):
        warm_lr_method("sibnet", 1e-4)
    with pytest.raises(ConfigError, match="unknown method"):
        get_method("sibnet-lr0.1")


def test_ablations_of_the_default_objective_change_one_setting():
    """no-cd/no-sc/sibnet-plus/raw of GradCAM + gradient balance differ from sibnet-gradcam-gradient in the one
    setting they name, and that objective is the configuration's default one."""
    from sibnet.config import load_config
    from sibnet.experiments.methods import get_method

    default = get_method("sibnet-gradcam-gradient")
    cfg = load_config()
    assert (cfg.loss.saliency, cfg.loss.balance) == ("gradcam", "gradient")
    for name, extra in (("no-cd-gradcam-gradient", {"loss.use_cd": False}),
                        ("no-sc-gradcam-gradient", {"loss.use_sc": False}),
                        ("sibnet-gradcam-raw", {"loss.balance": "none"})):
        assert get_method(name).overrides == {**default.overrides, **extra}, name
    plus = get_method("sibnet-plus-gradcam-gradient")
    assert plus.unlabeled and plus.overrides == default.overrides and not default.unlabeled


def test_held_out_test_study_evaluates_on_the_fold_part_and_stops_on_the_next(tmp_path):
    """--held-out-test: the jobs' configuration carries it, the evaluated split is the fold's part (not the
    validation part early stopping used), and a configuration without a fold is refused."""
    from sibnet.config import load_config
    from sibnet.errors import ConfigError
    from sibnet.experiments.evaluate import eval_dataset
    from sibnet.experiments.study import Job, Study, job_config, parse_budget
    from sibnet.experiments.tables import study_header
    from sibnet.training.build import build_split

    study = Study(dataset="synthetic", runs=tmp_path, budget=parse_budget("epochs=1"), image_size=32, folds=3,
                  options={"n": 30}, held_out_test=True)
    cfg = job_config(study, Job("baseline", 1, 0))
    assert cfg.data.held_out_test and cfg.data.fold == 1
    test, split = eval_dataset(study, cfg)
    val, train = build_split(cfg, "val"), build_split(cfg, "train")
    assert split == "test" and len(test) + len(val) + len(train) == 30
    assert not {*test.patients} & {*val.patients} and not {*train.patients} & ({*test.patients} | {*val.patients})
    assert "(each fold's part is the test split, the next fold's part the validation split, the other 1 train)" \
        in "\n".join(study_header("cmd", study, []))
    with pytest.raises(ConfigError, match="data.held_out_test: needs data.fold"):
        load_config(None, ["data.held_out_test=true"], {})


def test_workers_end_when_the_study_process_is_killed(tmp_path):
    """--jobs 2: SIGKILL of the study process ends its workers (they held the job locks) within seconds, so
    none goes on training into the job folders; the next call takes the stale locks over."""
    import os
    import signal
    import sys
    import time

    from sibnet.experiments.store import lock_holder, pid_alive

    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "sibnet", *argv(runs, tmp_path / "out", budget="epochs=500"), "--jobs", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        pids: list[int] = []
        while time.time() < deadline and len(pids) < 2:
            pids = [p for p in (lock_holder(f) for f in runs.glob("*/fold*-seed*")) if p]
            time.sleep(0.5)
        assert len(pids) == 2, "the workers did not start their jobs"
        assert all(pid_alive(p) for p in pids)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.time() + 20
    while time.time() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.2)
    alive = [p for p in pids if pid_alive(p)]
    for p in alive:  # do not leave them running when the test fails
        os.kill(p, signal.SIGKILL)
    assert not alive, "workers outlived the study process"


def test_case_indices_take_the_first_images_of_each_class_once():
    from sibnet.experiments.cases import case_indices

    labels = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 1]])
    assert case_indices(labels, 1) == [0, 1, 6, 2]
    assert case_indices(labels, 2) == [0, 1, 4, 6, 2]  # row 1 counts once (for the first class)
    assert case_indices(labels[:, :2][[0, 1]], 3) == [0, 1]  # no row without a class: none added
    with pytest.raises(Exception, match="--cases: must be >= 1"):
        case_indices(labels, 0)


def test_cases_figures_show_every_method_on_the_same_images(study, capsys):
    """experiment cases: one PNG per case (rows: the methods' maps) and cases.md under the command."""
    from PIL import Image

    out = study["out"] / "cases"
    assert main(argv(study["runs"], out, table="cases", extra=("--cases", "1", "--saliency", "gradcam",
                                                               "--case-job", "1,0"))) == 0
    text = (out / "cases.md").read_text()
    pngs = sorted(out.glob("case_*.png"))
    assert pngs and all(f"`{p.name}`" in text for p in pngs) and "experiment cases" in text
    assert "fold-1 seed-0 job" in text and "gradcam map" in text
    width, height = Image.open(pngs[0]).size
    assert height > width / 6 * len(METHODS) * 0.8  # one row per method, six columns (image + 5 classes)
    assert main(argv(study["runs"], out, table="cases", extra=("--case-job", "2,0"))) == 2
    assert "--case-job '2,0'" in capsys.readouterr().err


def test_agreement_table_with_contrastive_maps(study):
    """table3 --saliency-option contrast=clrp: the contrastive maps' agreement, cached apart from the plain."""
    from sibnet.data.registry import build_dataset
    from sibnet.evaluation.agreement import saliency_agreement
    from sibnet.evaluation.run import compute_maps
    from sibnet.training.checkpoint import load_model_from_checkpoint

    out = study["out"] / "clrp"
    assert main(argv(study["runs"], out, table="table3",
                     extra=("--max-maps", "6", "--saliency-option", "contrast=clrp"))) == 0
    header, rows = read_csv_table(out / "table3.csv")
    assert any("maps: deep_taylor contrast=clrp for every model" in h for h in header)
    test = build_dataset("synthetic", split="test", image_size=32, fold=1, folds=2, seed=0, n=16)
    per_run = []
    for f in (0, 1):
        model, meta = load_model_from_checkpoint(study["runs"] / "baseline" / f"fold{f}-seed0" / "last.pt")
        maps = compute_maps(model, test, "deep_taylor", range(6), contrast="clrp")
        per_run.append(saliency_agreement(maps["maps"], maps["masks"], maps["labels"],
                                          class_names=meta["class_names"])["mean"]["dice"])
    assert float({r["method"]: r for r in rows}["baseline"]["dice"]) == pytest.approx(np.mean(per_run))
    folder = study["runs"] / "baseline" / "fold0-seed0"
    assert (folder / "agreement-deep_taylor-contrast-clrp.json").is_file()
    assert main(argv(study["runs"], out, table="table3", extra=("--saliency-option", "contrast=no"))) == 2


def test_agreement_caches_of_different_map_methods_stay_side_by_side(study, monkeypatch):
    """table3 with GradCAM maps and then with DeepTaylor maps: each keeps its own cache, so a rerun of
    either computes nothing; a cache under the older shared name (agreement.json) is read when its key
    matches and recomputed when it holds another method's maps."""
    import shutil

    from sibnet.experiments import agreement as agreement_module

    out = study["out"] / "caches"
    extra = ("--max-maps", "4")
    assert main(argv(study["runs"], out / "gc", table="table3", extra=extra + ("--saliency", "gradcam"))) == 0
    assert main(argv(study["runs"], out / "dt", table="table3", extra=extra)) == 0
    folders = job_files(study["runs"])
    assert all((p / "agreement-gradcam.json").is_file() and (p / "agreement-deep_taylor.json").is_file()
               for p in folders)
    calls = []
    real = agreement_module.checkpoint_agreement
    monkeypatch.setattr(agreement_module, "checkpoint_agreement", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert main(argv(study["runs"], out / "gc2", table="table3", extra=extra + ("--saliency", "gradcam"))) == 0
    assert main(argv(study["runs"], out / "dt2", table="table3", extra=extra)) == 0
    assert calls == []
    assert read_csv_table(out / "gc" / "table3.csv")[1] == read_csv_table(out / "gc2" / "table3.csv")[1]
    # the older name: one folder's GradCAM cache moved to agreement.json is read from there ...
    folder = folders[0]
    shutil.move(folder / "agreement-gradcam.json", folder / "agreement.json")
    assert main(argv(study["runs"], out / "gc3", table="table3", extra=extra + ("--saliency", "gradcam"))) == 0
    assert calls == [] and not (folder / "agreement-gradcam.json").exists()
    # ... and a cache of another method under that name is not taken for GradCAM's
    shutil.copyfile(folder / "agreement-deep_taylor.json", folder / "agreement.json")
    assert main(argv(study["runs"], out / "gc4", table="table3", extra=extra + ("--saliency", "gradcam"))) == 0
    assert len(calls) == 1 and (folder / "agreement-gradcam.json").is_file()


def test_a_study_may_choose_its_classifier_and_old_identities_still_match(tmp_path):
    """model.name=resnet18 as a study override trains ResNet-18 for the plain methods (the attention
    variants keep their DenseNet-121); a default study's identity still names densenet121."""
    from sibnet.experiments.methods import get_method
    from sibnet.experiments.runner import build_job_model
    from sibnet.experiments.study import Job, Study, job_config, job_identity, parse_budget

    study = Study(dataset="synthetic", runs=tmp_path, budget=parse_budget("epochs=1"), image_size=32,
                  folds=2, options={"n": 8}, overrides=("model.name=resnet18",))
    job = Job("baseline", 0, 0)
    cfg = job_config(study, job)
    assert cfg.model.name == "resnet18"
    assert build_job_model(get_method("baseline"), cfg, None) is None  # the trainer builds model.name
    assert job_identity(study, job, cfg)["model"] == "resnet18"
    se = job_config(study, Job("se", 0, 0))

    class Info:
        in_channels, num_classes = 1, 5

    assert build_job_model(get_method("se"), se, Info()).model_name == "densenet121-se"
    plain = Study(dataset="synthetic", runs=tmp_path, budget=parse_budget("epochs=1"), image_size=32,
                  folds=2, options={"n": 8})
    assert job_identity(plain, job, job_config(plain, job))["model"] == "densenet121"


def test_table3_on_shortcut_data_reports_the_share_on_the_glyph(tmp_path):
    """With --data-option shortcut=<class>, table 3 adds the shortcut class's map share inside the glyph's box,
    equal to glyph_summary on the job's own maps."""
    from sibnet.data.registry import build_dataset
    from sibnet.evaluation.run import compute_maps, glyph_summary
    from sibnet.training.checkpoint import load_model_from_checkpoint

    runs, out = tmp_path / "runs", tmp_path / "out"
    base = ["experiment", "table1", "--dataset", "synthetic", "--image-size", "32", "--folds", "1", "--seeds", "1",
            "--budget", "steps=1", "--batch-size", "8", "--data-option", "n=16", "--data-option",
            "shortcut=Cardiomegaly", "--methods", "baseline,sibnet-gradcam-gradient", "--runs", str(runs),
            "--out", str(out)]
    assert main(base) == 0
    base[1] = "table3"
    assert main(base + ["--max-maps", "12", "--saliency", "gradcam"]) == 0
    header, rows = read_csv_table(out / "table3.csv")
    assert any(h.startswith("on glyph: share of the Cardiomegaly map") for h in header), header
    assert "| on glyph |" in (out / "table3.md").read_text()
    test = build_dataset("synthetic", split="test", image_size=32, seed=0, n=16, shortcut="Cardiomegaly")
    model, meta = load_model_from_checkpoint(runs / "baseline" / "fold0-seed0" / "last.pt")
    maps = compute_maps(model, test, "gradcam", range(12))
    want = glyph_summary(maps["maps"], test.marker[:12], test.info.extra["marker_box"], meta["class_names"],
                         "Cardiomegaly")
    assert want["n"] > 0
    assert float(rows[0]["glyph_share"]) == pytest.approx(want["mean"], abs=1e-6)
    assert "| Δon glyph vs baseline [95% CI] |" in (out / "table3.md").read_text()
    assert float(rows[1]["diff_glyph"]) == pytest.approx(float(rows[1]["glyph_share"]) - want["mean"], abs=1e-6)
    base[1] = "cases"
    assert main(base + ["--out", str(out / "cases"), "--cases", "1", "--saliency", "gradcam"]) == 0
    md = (out / "cases" / "cases.md").read_text()
    assert "magenta: the Cardiomegaly shortcut glyph" in md and ("with the glyph" in md or "no glyph" in md)
    assert list((out / "cases").glob("case_*.png"))
