"""Training that never loses work: resume from a checkpoint alone, and the faults around it.

* ``sibnet train --resume OUT/last.pt`` takes the run's configuration and folder from the
  checkpoint (a process killed with SIGKILL mid-epoch, then resumed with no other flag, ends with
  the weights of an uninterrupted run); ``--resume auto``; ``--out`` elsewhere copies the run.
* A process killed while it writes a checkpoint, a full disk or a read-only folder at a write, a
  truncated ``last.pt``, a non-finite loss and a dataset file that disappears mid-epoch each end
  in a one-line message with the previous checkpoint intact.

The child process (this file run as a script) trains the tiny set-up of ``test_train_loop`` and
dies with SIGKILL inside the checkpoint write of a given step.
"""

from __future__ import annotations

import argparse
import csv
import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import test_train_loop as t  # noqa: E402

import sibnet as sibnet_package  # noqa: E402
from sibnet.errors import ConfigError, DataError, SibnetError  # noqa: E402
from sibnet.training import load_checkpoint  # noqa: E402
from sibnet.training.trainer import newest_checkpoint  # noqa: E402

EPOCHS, BATCHES = 3, 6  # the tiny set-up: 24 items, batch 4


# ---------------------------------------------------------------- child process: killed inside a write

def child(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--die-in-save", type=int, default=None,
                   help="SIGKILL half-way through writing last.pt at this step")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    real_save = torch.save

    def dying_save(payload, fh, *args, **kwargs):
        if a.die_in_save is not None and payload["state"]["step"] == a.die_in_save and "last.pt" in str(fh.name):
            buf = io.BytesIO()
            real_save(payload, buf, *args, **kwargs)
            fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            fh.flush()
            os.fsync(fh.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(payload, fh, *args, **kwargs)

    torch.save = dying_save
    cfg = t.tiny_config(a.out, f"train.epochs={EPOCHS}")
    t.tiny_trainer(cfg).fit()
    print("DONE", flush=True)


def run_child(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("reference") / "run"
    t.tiny_trainer(t.tiny_config(out, f"train.epochs={EPOCHS}")).fit()
    return load_checkpoint(out / "last.pt")


def assert_same_run(final: dict, reference: dict) -> None:
    assert final["state"]["step"] == reference["state"]["step"]
    t.assert_same_weights(final["model"], reference["model"])
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in reference["state"]["history"]]
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in final["state"]["history"]] == strip


def test_sigkill_inside_a_checkpoint_write_keeps_the_previous_one_and_resume_is_exact(tmp_path, reference):
    out = tmp_path / "run"
    res = run_child(str(out), "--die-in-save", str(3 * BATCHES))  # dies writing the end of epoch 3
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    assert list(out.glob(".last.pt.tmp-*")), "the half-written temporary file should be left behind"
    assert load_checkpoint(out / "last.pt")["state"]["step"] == 2 * BATCHES  # the previous one, intact
    assert load_checkpoint(out / "last.prev.pt")["state"]["step"] == BATCHES  # and the one before it
    t.tiny_trainer(t.tiny_config(out, f"train.epochs={EPOCHS}")).fit(resume=out)
    assert_same_run(load_checkpoint(out / "last.pt"), reference)
    assert not list(out.glob(".*.tmp-*"))  # the killed write's leftover is gone


# ---------------------------------------------------------------- full disk, read-only folder

def _fail_at_step(monkeypatch, step: int, exc: OSError) -> None:
    import sibnet.training.checkpoint as ck

    real_save = torch.save

    def save(payload, fh, *args, **kwargs):
        if payload["state"]["step"] == step:
            fh.write(b"partial")
            raise exc
        return real_save(payload, fh, *args, **kwargs)

    monkeypatch.setattr(ck.torch, "save", save)


@pytest.mark.parametrize("exc, reason", [
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "No space left on device"),
    (OSError(errno.EROFS, os.strerror(errno.EROFS)), "Read-only file system"),
])
def test_a_failed_checkpoint_write_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, exc, reason):
    out = tmp_path / "run"
    _fail_at_step(monkeypatch, 2 * BATCHES, exc)
    with pytest.raises(SibnetError) as info:
        t.tiny_trainer(t.tiny_config(out)).fit()
    msg = str(info.value)
    assert "\n" not in msg and str(out / "last.pt") in msg and reason in msg and "previous version is intact" in msg
    assert load_checkpoint(out / "last.pt")["state"]["step"] == BATCHES
    assert not list(out.glob(".*.tmp-*"))
    monkeypatch.undo()
    t.tiny_trainer(t.tiny_config(out)).fit(resume=out)  # the run goes on from the intact checkpoint
    assert load_checkpoint(out / "last.pt")["state"]["step"] == EPOCHS * BATCHES


def test_a_folder_that_refuses_writes_is_one_line(tmp_path, monkeypatch):
    """A read-only output folder (simulated: tests may run as root, where chmod does not stop writes)."""
    import sibnet.files as files

    out = tmp_path / "run"
    t.tiny_trainer(t.tiny_config(out, "train.epochs=1")).fit()

    def refuse(path, mode="r", *args, **kwargs):
        if "w" in mode:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(files, "open", refuse, raising=False)
    with pytest.raises(SibnetError, match=r"metrics.csv: cannot write the metrics: Permission denied"):
        t.tiny_trainer(t.tiny_config(out, "train.epochs=2")).fit(resume=out)
    assert load_checkpoint(out / "last.pt")["state"]["step"] == BATCHES


# ---------------------------------------------------------------- truncated or corrupt last.pt

@pytest.fixture
def two_epochs(tmp_path) -> Path:
    out = tmp_path / "run"
    t.tiny_trainer(t.tiny_config(out, "train.epochs=2")).fit()
    return out


@pytest.mark.parametrize("damage", ["truncate", "garbage", "delete"])
def test_a_damaged_last_pt_is_refused_naming_the_checkpoint_to_continue_from(two_epochs, damage):
    last = two_epochs / "last.pt"
    if damage == "truncate":
        last.write_bytes(last.read_bytes()[:1000])
    elif damage == "garbage":
        last.write_bytes(b"\x00not a checkpoint" * 100)
    else:
        last.unlink()
    with pytest.raises(SibnetError) as info:
        t.tiny_trainer(t.tiny_config(two_epochs)).fit(resume=last)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(("--resume: no checkpoint at " + str(last), str(last)))
    assert f"{two_epochs / 'last.prev.pt'} (step {BATCHES})" in msg and str(two_epochs / "best.pt") in msg
    # --resume auto takes the newest readable one, and the run continues from it
    best_step = load_checkpoint(two_epochs / "best.pt")["state"]["step"]
    chosen = newest_checkpoint(two_epochs)
    assert chosen.name == ("best.pt" if best_step > BATCHES else "last.prev.pt")
    t.tiny_trainer(t.tiny_config(two_epochs)).fit(resume=chosen)
    assert load_checkpoint(last)["state"]["step"] == EPOCHS * BATCHES


def test_resuming_from_the_kept_previous_checkpoint_is_exact(two_epochs, reference):
    t.tiny_trainer(t.tiny_config(two_epochs)).fit(resume=two_epochs / "last.prev.pt")
    assert_same_run(load_checkpoint(two_epochs / "last.pt"), reference)
    rows = list(csv.DictReader(open(two_epochs / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]


# ---------------------------------------------------------------- non-finite loss

class NanAt(t.PlainLoss):
    """PlainLoss whose ``cd`` term is NaN at the listed (0-based) calls."""

    calls: tuple = ()

    def __init__(self, *args):
        super().__init__(*args)
        self.n = 0

    def __call__(self, x, y):
        total, terms = super().__call__(x, y)
        bad = self.n in self.calls
        self.n += 1
        if bad:
            cd = torch.tensor(float("nan"))
            return total + cd, {**terms, "cd": cd}
        return total, terms


def nan_at(*calls):
    return type("Nan", (NanAt,), {"calls": calls})


def test_a_non_finite_loss_stops_naming_the_step_and_term(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(SibnetError) as info:
        t.tiny_trainer(t.tiny_config(out), loss_factory=nan_at(BATCHES + 2)).fit()
    msg = str(info.value)
    assert "\n" not in msg and f"step {BATCHES + 3} (epoch 2, batch 3)" in msg and "cd (nan)" in msg
    assert "wce" not in msg and "train.nonfinite=skip" in msg and f"{out / 'last.pt'} stays the last good" in msg
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["state"]["step"] == BATCHES
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_skipping_non_finite_steps_takes_no_optimizer_step_and_counts_them(tmp_path):
    out = tmp_path / "run"
    t.tiny_trainer(t.tiny_config(out, "train.nonfinite=skip"), loss_factory=nan_at(BATCHES + 2, BATCHES + 4)).fit()
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["state"]["step"] == EPOCHS * BATCHES
    adam_steps = {float(s["step"]) for s in ckpt["optimizer"]["state"].values()}
    assert adam_steps == {EPOCHS * BATCHES - 2.0}
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [int(r["skipped_steps"]) for r in rows] == [0, 2, 0]
    assert all(np.isfinite(float(r["train_total"])) for r in rows)


# ---------------------------------------------------------------- dataset files that vanish mid-epoch

def _csv_dataset(root: Path, n: int = 16):
    from PIL import Image

    from sibnet.data.registry import build_dataset

    root.mkdir()
    rng = np.random.default_rng(0)
    with open(root / "labels.csv", "w") as fh:
        fh.write("path,a,b\n")
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(root / f"img{i}.png")
            fh.write(f"img{i}.png,{i % 2},{(i // 2) % 2}\n")
    return build_dataset("csv", root=root / "labels.csv", image_size=t.SIZE)


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("fault", ["deleted", "corrupt"])
def test_a_dataset_file_that_vanishes_mid_epoch_is_one_line_naming_it(tmp_path, workers, fault):
    train = _csv_dataset(tmp_path / "data")
    victims = sorted((tmp_path / "data").glob("img*.png"))

    class Vandal(t.PlainLoss):
        def __call__(self, x, y):
            for path in victims:  # after the first batch was read
                if fault == "deleted":
                    path.unlink(missing_ok=True)
                else:
                    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
            return super().__call__(x, y)

    cfg = t.tiny_config(tmp_path / "run", "data.val_split=null", f"data.num_workers={workers}")
    trainer = t.Trainer(cfg, datasets=(train, None, None), model=t.TinyNet(), loss_factory=Vandal)
    with pytest.raises(DataError) as info:
        trainer.fit()
    msg = str(info.value)
    assert "\n" not in msg and "Traceback" not in msg
    assert msg.startswith(str(tmp_path / "data" / "img")) and ("not found" if fault == "deleted" else "image") in msg


# ---------------------------------------------------------------- data.seed and data.options

def test_data_seed_sets_the_dataset_draws_apart_from_the_training_seed(tmp_path):
    from sibnet.config import load_config
    from sibnet.training.build import build_datasets

    def draws(*overrides):
        cfg = load_config(None, ["data.image_size=16", "data.options={n: 12}", *overrides])
        train, val, _ = build_datasets(cfg)
        return train[0]["image"], val[0]["image"]

    same = draws("train.seed=5")
    assert all(torch.equal(a, b) for a, b in zip(same, draws("train.seed=5", "data.seed=5")))
    assert all(torch.equal(a, b) for a, b in zip(draws("train.seed=1", "data.seed=5"), same))
    assert not torch.equal(draws("train.seed=5", "data.seed=6")[0], same[0])


@pytest.mark.parametrize("key, names", [("seed", "data.seed"), ("root", "data.root"), ("size", "data.image_size"),
                                        ("fold", "data.fold"), ("split", "data.train_split")])
def test_data_options_may_not_hold_what_the_loader_gets_elsewhere(key, names):
    from sibnet.config import load_config

    with pytest.raises(ConfigError, match=rf"^data.options.{key}: the loader gets '{key}' from {names}"):
        load_config(None, [f"data.options={{{key}: 11}}"])
    with pytest.raises(ConfigError, match=rf"^unlabeled.options.{key}:"):
        load_config(None, [f"unlabeled.options={{{key}: 11}}"])


def test_cli_data_options_seed_is_one_line(capsys):
    from sibnet.cli import main

    assert main(["train", "data.options={seed: 11}", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data.options.seed" in err and "data.seed" in err


# ---------------------------------------------------------------- the command line: resume from the checkpoint alone

TINY = ["--dataset", "synthetic", "--model", "resnet18", "--image-size", "32", "--batch-size", "4", "--device", "cpu",
        "--saliency", "gradcam", "--no-progress", "data.options={n: 16}", "train.deterministic=true",
        "train.checkpoint_every=1"]
SRC = str(Path(sibnet_package.__file__).resolve().parents[1])  # the children import this sibnet from any folder
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([SRC, *filter(None, [os.environ.get("PYTHONPATH")])])}


def sibnet(capsys, *args: str) -> tuple[int, str, str]:
    """``sibnet ARGS`` in this process (a subprocess would spend most of its time importing torch)."""
    from sibnet.cli import main

    capsys.readouterr()
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def kill_mid_epoch(out: Path, *args: str) -> dict:
    """Start ``sibnet train``, SIGKILL it once a mid-epoch checkpoint exists; that checkpoint's state."""
    proc = subprocess.Popen([sys.executable, "-m", "sibnet", "train", *args, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            try:
                state = load_checkpoint(out / "last.pt")["state"]
            except SibnetError:
                state = None
            if state is not None and state["batch_in_epoch"] > 0 and state["step"] >= 3:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.05)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL, ("not killed", proc.stderr.read()[-2000:])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return load_checkpoint(out / "last.pt")["state"]


def test_sigkill_then_resume_with_the_checkpoint_alone_matches_an_uninterrupted_run(tmp_path, capsys, monkeypatch):
    rc, out, err = sibnet(capsys, "train", "--epochs", "2", "--out", str(tmp_path / "ref"), *TINY)
    assert rc == 0, err
    ref = json.loads(out)
    killed = kill_mid_epoch(tmp_path / "cut", "--epochs", "2", *TINY)
    assert 0 < killed["step"] < ref["steps"]
    # no other flag; from another folder, so the default runs/sibnet would be wrong
    monkeypatch.chdir(tmp_path)
    rc, out, err = sibnet(capsys, "train", "--resume", str(tmp_path / "cut" / "last.pt"))
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["last"] == str(tmp_path / "cut" / "last.pt") and summary["steps"] == ref["steps"]
    assert not (tmp_path / "runs").exists()
    a, b = load_checkpoint(tmp_path / "ref" / "last.pt"), load_checkpoint(tmp_path / "cut" / "last.pt")
    t.assert_same_weights(a["model"], b["model"])
    assert [r["val_auroc"] for r in a["state"]["history"]] == [r["val_auroc"] for r in b["state"]["history"]]
    # resumable settings may change; others are refused naming the key
    rc, out, err = sibnet(capsys, "train", "--resume", str(tmp_path / "cut" / "last.pt"), "--lr", "0.1",
                          "--epochs", "3")
    assert rc == 2 and "optim.lr" in err and err.count("\n") == 1
    # --out elsewhere: the run's files are copied there first, then it continues there
    rc, out, err = sibnet(capsys, "train", "--resume", str(tmp_path / "cut" / "last.pt"), "--epochs", "3",
                          "--out", str(tmp_path / "moved"))
    assert rc == 0, err
    assert json.loads(out)["epochs"] == 3 and load_checkpoint(tmp_path / "cut" / "last.pt")["state"]["epoch"] == 2
    rows = list(csv.DictReader(open(tmp_path / "moved" / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert (tmp_path / "moved" / "best.pt").is_file() and (tmp_path / "moved" / "tensorboard").is_dir()


def test_resume_auto_starts_fresh_then_continues(tmp_path, capsys):
    from sibnet.cli import main

    out = str(tmp_path / "job")
    args = ["train", "--resume", "auto", "--out", out, *TINY[:-1], "--saliency", "none"]
    assert main([*args, "--epochs", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["epochs"] == 1
    assert main([*args, "--epochs", "2"]) == 0  # the same job line, later: continues
    assert json.loads(capsys.readouterr().out)["epochs"] == 2
    assert load_checkpoint(Path(out) / "last.prev.pt")["state"]["epoch"] == 1
    assert main(["train", "--resume", "auto", "--out", out, "--image-size", "64"]) == 2
    assert "data.image_size" in capsys.readouterr().err


def test_print_config_with_resume_shows_the_checkpoints_configuration(tmp_path, capsys):
    from sibnet.cli import main

    out = tmp_path / "run"
    t.tiny_trainer(t.tiny_config(out, "train.epochs=1", "optim.lr=0.0123")).fit()
    assert main(["train", "--resume", str(out / "last.pt"), "--print-config", "--epochs", "7"]) == 0
    text = capsys.readouterr().out
    assert "lr: 0.0123" in text and "epochs: 7" in text and f"out: {out}" in text


if __name__ == "__main__":
    child(sys.argv[1:])
