"""Running jobs: train a job to its budget epoch by epoch, evaluate it, record it; many jobs in processes.

Conventions
-----------
* A job trains epoch by epoch through :class:`sibnet.training.Trainer` (each epoch resumes from
  ``last.pt``, which the trainer makes exact), so an interrupted job continues from its last
  finished epoch, and the validation loss of every epoch is recorded from the checkpoint.
* A job with a ``done.json`` for the study's budget is skipped; one that another live process
  holds (``running.lock``) is reported busy; a folder started with other settings is refused
  (:func:`sibnet.experiments.study.check_identity`).
* A warm-started method (``warm_start``) begins its first epoch from the evaluated checkpoint of
  its source job of the same fold and seed, which must be finished first.
* With ``--jobs`` > 1 each worker process ends itself within a second of its parent's end (a study
  stopped with SIGTERM or SIGKILL leaves no worker training on and writing into its job folders);
  the job it held resumes from its last finished epoch on the next call (checkpoints are atomic, and
  the lock of a dead process is taken over).
"""

from __future__ import annotations

import copy
import math
import multiprocessing as mp
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from ..config import Config
from ..errors import SibnetError
from ..models.classifier import build_classifier
from ..training import Trainer
from ..training.build import build_datasets
from ..training.checkpoint import FORMAT, VERSION, load_checkpoint, load_model_from_checkpoint, save_checkpoint
from ..training.labels import dataset_class_weights
from ..training.rng import seed_everything
from .evaluate import evaluate_job, weighted_loss
from .methods import Method, get_method
from .store import (
    LAST,
    acquire_lock,
    append_val_loss,
    check_job_record,
    epoch_checkpoint,
    finished_record,
    release_lock,
    remove_done,
    write_done,
    write_job_record,
)
from .study import Job, Study, job_config, job_identity

# ------------------------------------------------------------------ the model a job starts with

def build_job_model(method: Method, cfg: Config, info) -> torch.nn.Module | None:
    """An injected model for the methods with a classifier of their own (attention variants, capacity
    scaling); None: the trainer builds the configuration's ``model.name``."""
    if method.model is None or method.model == cfg.model.name:
        return None
    seed_everything(cfg.train.seed)
    model = build_classifier(method.model, info.in_channels, info.num_classes, dropout=cfg.model.dropout)
    model.model_name = method.model
    return model


def warm_start_weights(study: Study, job: Job) -> dict | None:
    """The model weights a warm-started job begins with (None for a job trained from scratch)."""
    method = get_method(job.method)
    if method.warm_start is None:
        return None
    source = Job(method.warm_start, job.fold, job.seed)
    path = source.folder(study) / study.checkpoint
    if finished_record(study, source) is None or not path.is_file():
        raise SibnetError(f"{job.key} starts from the finished {source.key} job's {study.checkpoint}, which is not "
                          f"finished yet: run {method.warm_start!r} first (list it before {job.method!r} in --methods)")
    return load_checkpoint(path)["model"]


def _first_model(study: Study, job: Job, cfg: Config, info, resume: Path | None) -> torch.nn.Module | None:
    """The model handed to the trainer for the next epoch (:func:`build_job_model`); at a warm-started
    job's first epoch (nothing to resume) it holds the source job's weights."""
    method = get_method(job.method)
    model = build_job_model(method, cfg, info)
    if resume is None and method.warm_start is not None:
        if model is None:
            model = build_classifier(cfg.model.name, info.in_channels, info.num_classes, dropout=cfg.model.dropout)
            model.model_name = cfg.model.name
        model.load_state_dict(warm_start_weights(study, job))
    return model


# ------------------------------------------------------------------ one job

def _trained_state(folder: Path) -> dict:
    last = folder / LAST
    if not last.is_file():
        return {"epoch": 0, "step": 0, "stop_reason": ""}
    return load_checkpoint(last)["state"]


def _finished(state: dict, study: Study, job: Job) -> bool:
    if state.get("stop_reason"):  # early stopping
        return True
    return study.job_budget(job).reached(state["epoch"], state["step"])


def _record_epoch(study: Study, job: Job, cfg: Config, val, task: str, class_weight, log) -> dict:
    """After an epoch: its validation loss into ``val_loss.csv``, its model kept (``keep_epochs``), a
    log line; returns the trainer's state."""
    folder = job.folder(study)
    ckpt = load_checkpoint(folder / LAST)
    state = ckpt["state"]
    net, _ = load_model_from_checkpoint(folder / LAST)
    vloss = weighted_loss(net, val, task, class_weight, cfg.data.batch_size, "cpu") if val is not None else math.nan
    append_val_loss(folder, state["epoch"], state["step"], vloss)
    if study.keep_epochs:
        save_checkpoint(epoch_checkpoint(folder, state["epoch"]), {"format": FORMAT, "version": VERSION,
                                                                   "model": ckpt["model"], "meta": ckpt["meta"]})
    log(f"{job.key}: epoch {state['epoch']} step {state['step']} val AUROC "
        f"{state['history'][-1].get('val_auroc', math.nan):.4f} val loss {vloss:.4f}")
    return state


def train_to_budget(study: Study, job: Job, cfg: Config, datasets: tuple, class_weight, log=print) -> dict:
    """Train ``job`` one epoch at a time (resuming from ``last.pt``) until its budget is used up or
    early stopping ends it; returns the trainer's final state."""
    folder = job.folder(study)
    train, val, _ = datasets
    state = _trained_state(folder)
    while not _finished(state, study, job):
        next_epochs = state["epoch"] + 1
        step_cfg = copy.deepcopy(cfg)
        step_cfg.train.epochs = next_epochs
        resume = folder / LAST if (folder / LAST).is_file() else None
        model = _first_model(study, job, cfg, train.info, resume)
        Trainer(step_cfg, datasets=datasets, model=model).fit(resume=resume, overwrite=resume is None)
        state = _record_epoch(study, job, cfg, val, train.info.task, class_weight, log)
        if state["epoch"] < next_epochs:  # the trainer stopped early (max_steps inside the epoch)
            break
    return state


def run_job(study: Study, job: Job, log=print) -> dict:
    """Train (or continue) one job, evaluate it and write ``done.json``; returns its content.

    Returns ``{"status": "skipped"}`` plus the old record when the job was already done, and
    ``{"status": "busy"}`` when another live process holds its lock.
    """
    folder = job.folder(study)
    cfg = job_config(study, job)
    identity = job_identity(study, job, cfg)
    check_job_record(folder, identity)
    done = finished_record(study, job)
    if done is not None:
        return {**done, "status": "skipped"}
    if not acquire_lock(folder):
        return {"status": "busy", "job": job.key}
    try:
        write_job_record(folder, identity)
        remove_done(folder)
        datasets = build_datasets(cfg)
        class_weight = torch.as_tensor(dataset_class_weights(datasets[0]), dtype=torch.float32)
        started = time.perf_counter()
        state = train_to_budget(study, job, cfg, datasets, class_weight, log)
        record = evaluate_job(study, job, cfg)
        record.update({"state": {"epochs": state["epoch"], "steps": state["step"]},
                       "seconds_this_call": round(time.perf_counter() - started, 1)})
        write_done(folder, record)
        return {**record, "status": "trained"}
    finally:
        release_lock(folder)


# ------------------------------------------------------------------ many jobs

def _run_or_fail(study: Study, job: Job, log) -> dict:
    """:func:`run_job`; a :class:`SibnetError` becomes a ``failed`` result."""
    try:
        return run_job(study, job, log=log)
    except SibnetError as exc:
        return {"status": "failed", "job": job.key, "error": str(exc)}


def exit_with_parent(parent: int, interval: float = 0.5) -> threading.Thread:
    """Start a daemon thread that ends this process (exit code 3) as soon as its parent process is no
    longer ``parent`` (it ended and the process was handed to another)."""
    def watch():
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(3)

    thread = threading.Thread(target=watch, daemon=True, name="sibnet-parent-watch")
    thread.start()
    return thread


def _worker(study_dict: dict, job: tuple, threads: int) -> dict:
    torch.set_num_threads(max(1, threads))
    return _run_or_fail(Study.from_dict(study_dict), Job(*job), lambda msg: print(msg, flush=True))


def _reported(job: Job, result: dict, log) -> dict:
    log(f"{job.key}: {result['status']}" + (f" ({result['error']})" if result.get("error") else ""))
    return {**result, "job": job.key}


def run_jobs(study: Study, jobs: list[Job], n_parallel: int = 1, log=print) -> list[dict]:
    """Run the jobs that are not done (in ``n_parallel`` processes when > 1); returns one result each.

    A job that fails (a :class:`SibnetError`) is reported and the others go on.
    """
    if n_parallel <= 1:
        return [_reported(job, _run_or_fail(study, job, log), log) for job in jobs]
    threads = max(1, (os.cpu_count() or 1) // n_parallel)
    with ProcessPoolExecutor(max_workers=n_parallel, mp_context=mp.get_context("spawn"),
                             initializer=exit_with_parent, initargs=(os.getpid(),)) as pool:
        futures = [(job, pool.submit(_worker, study.to_dict(), (job.method, job.fold, job.seed), threads))
                   for job in jobs]
        return [_reported(job, future.result(), log) for job, future in futures]


__all__ = ["build_job_model", "exit_with_parent", "run_job", "run_jobs", "train_to_budget", "warm_start_weights"]
