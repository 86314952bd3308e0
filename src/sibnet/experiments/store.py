"""The run folder of a study: every file of a job's folder is named, read and written here.

Layout of a study folder (``--runs``)::

    <runs>/<method>/fold<F>-seed<S>/
        job.yaml        the job's identity and full training configuration (written at its start)
        config.yaml     written by the trainer; last.pt, best.pt, metrics.csv, tensorboard/
        val_loss.csv    weighted BCE/CE of the validation split after every epoch (Fig. 4)
        epoch<E>.pt     model-only checkpoint of every epoch (only with ``keep_epochs``)
        predictions.npz probabilities and labels of the evaluation split (the evaluated checkpoint)
        done.json       final metrics; a job with a done.json for the same budget is never re-run
        running.lock    pid of the process working on the job (stale locks of dead pids are taken over)
        <name>.json     cached evaluations of the job (tables 3-5; ``<name>.bn-train.json`` with
                        re-estimated BatchNorm statistics)

The records (``done.json``, ``job.yaml``, ``val_loss.csv``, the caches) are written atomically
(:func:`sibnet.files.atomic_write`).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from pathlib import Path

import numpy as np
import yaml

from ..files import atomic_write_text
from .study import Job, Study, check_identity, job_config, job_identity

DONE = "done.json"
JOB_RECORD = "job.yaml"
LOCK = "running.lock"
VAL_LOSS = "val_loss.csv"
PREDICTIONS = "predictions.npz"
METRICS = "metrics.csv"  # written by the trainer
LAST = "last.pt"  # written by the trainer


def read_json(path: Path) -> dict | None:
    """The content of a JSON record; None when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


# ------------------------------------------------------------------ done.json and job.yaml

def read_done(folder: Path) -> dict | None:
    """The job's final record (``done.json``), whatever its budget; None when there is none."""
    return read_json(Path(folder) / DONE)


def finished_record(study: Study, job: Job) -> dict | None:
    """The job's ``done.json`` when it finished the study's budget, else None."""
    done = read_done(job.folder(study))
    return done if done is not None and done.get("budget") == str(study.job_budget(job)) else None


def write_done(folder: Path, record: dict) -> None:
    atomic_write_text(Path(folder) / DONE, json.dumps(record, indent=1), what="job record")


def remove_done(folder: Path) -> None:
    (Path(folder) / DONE).unlink(missing_ok=True)


def read_job_record(folder: Path) -> dict | None:
    """The identity the job was started with (``job.yaml``); None before its start."""
    path = Path(folder) / JOB_RECORD
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else None


def write_job_record(folder: Path, identity: dict) -> None:
    atomic_write_text(Path(folder) / JOB_RECORD, yaml.safe_dump(identity, sort_keys=False), what="job record")


def check_job_record(folder: Path, identity: dict) -> None:
    """:func:`~sibnet.experiments.study.check_identity` against the folder's ``job.yaml`` (if any)."""
    old = read_job_record(folder)
    if old is not None:
        check_identity(old, identity, Path(folder) / JOB_RECORD)


def collect(study: Study, jobs: list[Job]) -> dict[Job, dict]:
    """``done.json`` records of the finished jobs (for the study's budget)."""
    out = {}
    for job in jobs:
        rec = finished_record(study, job)
        if rec is not None:
            check_job_record(job.folder(study), job_identity(study, job, job_config(study, job)))
            out[job] = rec
    return out


# ------------------------------------------------------------------ locks and status

def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, ended but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # Linux: the state field of /proc/PID/stat, after the parenthesised command name
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def lock_holder(folder: Path) -> int:
    """The pid written in the folder's ``running.lock``; 0 when there is none (or it is unreadable)."""
    try:
        return int((Path(folder) / LOCK).read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def acquire_lock(folder: Path) -> bool:
    """Create ``running.lock`` with this pid; False when a live process holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pid = lock_holder(folder)
            if pid and pid != os.getpid() and pid_alive(pid):
                return False
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        return True
    return False


def release_lock(folder: Path) -> None:
    if lock_holder(folder) == os.getpid():
        with contextlib.suppress(OSError):
            (folder / LOCK).unlink()


def job_status(study: Study, job: Job) -> str:
    """``done``, ``running`` (a live lock), ``partial`` (a checkpoint, not finished) or ``pending``."""
    folder = job.folder(study)
    if finished_record(study, job) is not None:
        return "done"
    pid = lock_holder(folder)
    if pid and pid_alive(pid):
        return "running"
    return "partial" if (folder / LAST).is_file() else "pending"


# ------------------------------------------------------------------ per-epoch files

def read_val_loss(folder: Path) -> list[dict]:
    """The rows of ``val_loss.csv``: ``{"epoch", "step", "val_loss"}`` per epoch."""
    path = Path(folder) / VAL_LOSS
    if not path.is_file():
        return []
    lines = path.read_text().strip().splitlines()[1:]
    out = []
    for ln in lines:
        e, s, v = ln.split(",")
        out.append({"epoch": int(e), "step": int(s), "val_loss": float(v)})
    return out


def append_val_loss(folder: Path, epoch: int, step: int, value: float) -> None:
    """Record the validation loss of ``epoch`` (replacing the entries of that epoch and later ones)."""
    rows = [r for r in read_val_loss(folder) if r["epoch"] < epoch]
    rows.append({"epoch": epoch, "step": step, "val_loss": value})
    text = "epoch,step,val_loss\n" + "".join(f"{r['epoch']},{r['step']},{r['val_loss']:.6g}\n" for r in rows)
    atomic_write_text(Path(folder) / VAL_LOSS, text, what="validation loss")


def read_metrics(folder: Path) -> dict[str, list[float]]:
    """The columns of the trainer's ``metrics.csv`` as floats (empty cells nan); {} before the first epoch."""
    path = Path(folder) / METRICS
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    out: dict[str, list] = {}
    for r in rows:
        for k, v in r.items():
            out.setdefault(k, []).append(float(v) if v not in ("", None) else np.nan)
    return out


def epoch_checkpoint(folder: Path, epoch: int) -> Path:
    """Where the model of ``epoch`` is kept (``keep_epochs``)."""
    return Path(folder) / f"epoch{epoch}.pt"


def epoch_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """The kept ``(epoch, checkpoint)`` pairs of a job, in epoch order."""
    found = [(int(p.stem[len("epoch"):]), p) for p in Path(folder).glob("epoch*.pt")]
    return sorted(found, key=lambda t: t[0])


# ------------------------------------------------------------------ evaluation results

def write_predictions(folder: Path, probs: np.ndarray, labels: np.ndarray) -> None:
    np.savez_compressed(Path(folder) / PREDICTIONS, probs=probs, labels=labels)


def read_predictions(folder: Path):
    """``predictions.npz`` of the job (``probs``, ``labels``)."""
    return np.load(Path(folder) / PREDICTIONS)


def eval_cache(folder: Path, name: str, bn_stats: str) -> Path:
    """The cache file of an evaluation of a job (``noise.json``; ``noise.bn-train.json`` for re-estimated
    BatchNorm statistics), so both evaluations are kept side by side."""
    return folder / (f"{name}.json" if bn_stats == "stored" else f"{name}.bn-{bn_stats}.json")


def write_eval_cache(path: Path, result: dict) -> None:
    atomic_write_text(path, json.dumps(result), what="evaluation cache")


__all__ = ["DONE", "JOB_RECORD", "LOCK", "PREDICTIONS", "VAL_LOSS", "acquire_lock", "append_val_loss",
           "check_job_record", "collect", "epoch_checkpoint", "epoch_checkpoints", "eval_cache", "finished_record",
           "job_status", "lock_holder", "pid_alive", "read_done", "read_job_record", "read_json", "read_metrics",
           "read_predictions", "read_val_loss", "release_lock", "remove_done", "write_done", "write_eval_cache",
           "write_job_record", "write_predictions"]
