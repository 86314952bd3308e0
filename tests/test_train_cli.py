"""``sibnet train`` end to end on the embedded synthetic data with the real loss and models."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("sibnet.losses.sibnet_loss")
pytest.importorskip("sibnet.data.registry")

from sibnet.training import load_checkpoint, load_model_from_checkpoint  # noqa: E402

TINY = ["--dataset", "synthetic", "--model", "resnet18", "--image-size", "32", "--batch-size", "4",
        "--device", "cpu", "--no-progress", "data.options={n: 8}", "train.deterministic=true"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def sibnet_train(*args, timeout=300):
    res = subprocess.run([sys.executable, "-m", "sibnet", "train", *args], capture_output=True, text=True,
                         timeout=timeout, env=ENV)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout)


def test_cli_trains_sibnet_plus_and_the_checkpoint_rebuilds_the_model(tmp_path):
    out = tmp_path / "run"
    summary = sibnet_train("--saliency", "gradcam", "--epochs", "1", "--unlabeled", "unlabeled", "--out", str(out),
                           *TINY)
    assert summary["epochs"] == 1 and summary["steps"] == 2  # 8 images, batch 4
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == 1 and float(rows[0]["train_cd"]) > 0 and float(rows[0]["train_wce"]) > 0
    assert float(rows[0]["train_unlabeled_cd"]) > 0  # SIBNet+: unlabeled batches took part
    assert load_checkpoint(out / "last.pt")["state"]["unlabeled_batches"] == 2
    model, meta = load_model_from_checkpoint(out / "best.pt")
    assert meta["model_name"] == "resnet18" and meta["num_classes"] == 5 and meta["image_size"] == 32
    assert meta["saliency"] == "gradcam" and meta["task"] == "multilabel" and meta["in_channels"] == 1
    assert model(torch.rand(1, 1, 32, 32)).shape == (1, 5)


@pytest.mark.slow
def test_cli_resume_continues_like_an_uninterrupted_run(tmp_path):
    sibnet_train("--saliency", "deep_taylor", "--epochs", "2", "--out", str(tmp_path / "ref"), *TINY)
    sibnet_train("--saliency", "deep_taylor", "--epochs", "1", "--out", str(tmp_path / "cut"), *TINY)
    summary = sibnet_train("--saliency", "deep_taylor", "--epochs", "2", "--out", str(tmp_path / "cut"), "--resume",
                           *TINY)
    assert summary["epochs"] == 2
    a, b = load_checkpoint(tmp_path / "ref" / "last.pt"), load_checkpoint(tmp_path / "cut" / "last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
                    reason="torchrun not found")
def test_cli_under_torchrun(tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    out = tmp_path / "ddp"
    res = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "sibnet", "train", "--saliency",
                          "gradcam", "--epochs", "1", "--out", str(out), *TINY], capture_output=True, text=True,
                         timeout=300, env=ENV)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count('"epochs"') == 1  # one summary: rank 0 only
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["state"]["step"] == 1 and len(ckpt["rng"]) == 2  # 8 images / 2 ranks / batch 4


def test_overrides_may_stand_anywhere_on_the_line(capsys):
    from sibnet.cli import build_parser, parse_args

    parser = build_parser()
    args = parse_args(parser, ["train", "loss.radius=2", "--epochs", "1", "optim.lr=0.1"])
    assert args.overrides == ["loss.radius=2", "optim.lr=0.1"] and getattr(args, "flag:train.epochs") == 1
    args = parse_args(parser, ["experiment", "table1", "--dataset", "nih", "loss.embed_grad=maps", "--folds", "2"])
    assert args.overrides == ["loss.embed_grad=maps"] and args.folds == 2 and args.table == "table1"
    for argv, named in ((["train", "--epochs", "1", "--bogus"], "--bogus"),
                        (["experiment", "table1", "--folds", "2", "stray"], "stray"),
                        (["data", "summary", "synthetic", "a=1"], "a=1")):  # a command without overrides
        with pytest.raises(SystemExit) as exc:
            parse_args(parser, argv)
        assert exc.value.code == 2 and f"unrecognized arguments: {named}" in capsys.readouterr().err


def test_a_finished_run_is_the_start_of_a_sibnet_fine_tuning_run(tmp_path):
    """The warm start the results recommend: `model.pretrained` takes a sibnet checkpoint as it is."""
    from sibnet.models import build_classifier
    from sibnet.models.pretrained import load_pretrained

    base = tmp_path / "baseline"
    sibnet_train("--saliency", "none", "--epochs", "1", "--out", str(base), *TINY)
    trained = load_checkpoint(base / "best.pt")["model"]
    model = build_classifier("resnet18", in_channels=1, num_classes=5)
    report = load_pretrained(model, base / "best.pt", "resnet18")
    assert report["loaded"] == len(trained) and not report["head_reinitialised"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in trained.items())
    summary = sibnet_train("--saliency", "deep_taylor", "--epochs", "1", f"model.pretrained={base / 'best.pt'}",
                           "--out", str(tmp_path / "warm"), *TINY)
    assert summary["epochs"] == 1
    rows = list(csv.DictReader(open(tmp_path / "warm" / "metrics.csv")))
    assert float(rows[0]["train_cd"]) > 0
