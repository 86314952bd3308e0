"""Resumable experiment jobs: one (method, fold, seed) = one training run in its own folder.

Layout of a study folder (``--runs``)::

    <runs>/<method>/fold<F>-seed<S>/
        job.yaml        the job's identity and full training configuration (written at its start)
        config.yaml     written by the trainer; last.pt, best.pt, metrics.csv, tensorboard/
        val_loss.csv    weighted BCE/CE of the validation split after every epoch (Fig. 4)
        epoch<E>.pt     model-only checkpoint of every epoch (only with ``keep_epochs``)
        predictions.npz probabilities and labels of the evaluation split (the evaluated checkpoint)
        done.json       final metrics; a job with a done.json for the same budget is never re-run
        running.lock    pid of the process working on the job (stale locks of dead pids are taken over)

Conventions
-----------
* The job trains epoch by epoch through :class:`sibnet.training.Trainer` (each epoch resumes from
  ``last.pt``, which the trainer makes exact), so an interrupted job continues from its last
  finished epoch, and the validation loss of every epoch is recorded from the checkpoint.
* Budget: ``epochs=E`` and/or ``steps=N`` (optimizer steps); training stops at whichever comes
  first. Without ``patience`` early stopping is off: the evaluated model is ``last.pt``, the model
  at the end of the budget. With ``patience`` P, a job stops after P epochs without a better
  validation AUROC and the evaluated model is ``best.pt`` (the epoch of the best validation AUROC;
  the validation split selects it, the evaluation split never does).
* ``folds``: 2 or more is a cross-validation of the dataset's training pool (each fold's held-out
  part is its validation split); 1 means the dataset's own ``train``/``val``/``test`` splits (one
  "fold", job folders ``fold0-seedS``), e.g. the synthetic data at its full 1000/250/250 sizes.
* Evaluation split: ``auto`` = the dataset's official ``test`` split when it is nonempty, else the
  fold's held-out 20% (``val``; e.g. the NIH sample, whose images all lie in the official
  train_val list). Uncertain labels (-1) are masked out of AUROC/AUPRC.
* A job writes a mid-epoch checkpoint every ``CHECKPOINT_EVERY`` optimizer steps, so a killed
  job (e.g. out of memory) loses at most those steps.
* A folder whose ``job.yaml`` differs from the requested job in anything but the budget (and the
  settings that do not change results: checkpoint frequency, logging, device, loader workers) is an
  error (choose another ``--runs``); a larger budget continues a finished job, a smaller one is
  refused.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from ..config import Config, config_from_dict, data_seed, diff_configs
from ..errors import ConfigError, SibnetError
from .methods import Method, get_method

DATASET_DEFAULT_OPTIONS = {"nih": {"label_set": "chexpert5"}}
BUDGET_KEYS = ("train.epochs", "train.max_steps")
# settings that do not change a job's results (the trainer lets them change on resume)
FREE_KEYS = BUDGET_KEYS + ("train.checkpoint_every", "train.progress", "train.log_every", "train.device",
                           "data.num_workers", "train.watch_maps")
CHECKPOINT_EVERY = 5  # optimizer steps between mid-epoch checkpoints: a killed job loses at most these


# ------------------------------------------------------------------ budget

@dataclass(frozen=True)
class Budget:
    epochs: int | None = None
    steps: int | None = None

    def __str__(self) -> str:
        parts = ([f"epochs={self.epochs}"] if self.epochs else []) + ([f"steps={self.steps}"] if self.steps else [])
        return ",".join(parts)

    def covers(self, other: "Budget") -> bool:
        """True when this budget trains at least as far as ``other`` in every capped dimension."""
        def ge(a, b):  # a cap a (None: none) trains at least as far as cap b
            return a is None or (b is not None and a >= b)
        return ge(self.epochs, other.epochs) and ge(self.steps, other.steps)


def parse_budget(text: str) -> Budget:
    """``"epochs=3"``, ``"steps=200"`` or ``"epochs=3,steps=200"``."""
    values: dict[str, int] = {}
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        key, _, raw = part.partition("=")
        key = {"epoch": "epochs", "step": "steps", "iterations": "steps"}.get(key.strip(), key.strip())
        if key not in ("epochs", "steps") or not raw.strip().isdigit() or int(raw) < 1:
            raise ConfigError(f"--budget: expected epochs=N and/or steps=N (N >= 1), got {part!r}")
        values[key] = int(raw)
    if not values:
        raise ConfigError(f"--budget: expected epochs=N and/or steps=N, got {text!r}")
    return Budget(values.get("epochs"), values.get("steps"))


# ------------------------------------------------------------------ study and jobs

@dataclass
class Study:
    """Everything shared by the jobs of one table."""

    dataset: str
    runs: Path
    budget: Budget
    root: str | None = None
    image_size: int = 128
    folds: int = 5
    seeds: tuple[int, ...] = (0,)
    batch_size: int = 16
    options: dict = field(default_factory=dict)  # dataset options (data.options)
    overrides: tuple[str, ...] = ()  # extra KEY=VALUE config overrides, applied to every job
    eval_split: str = "auto"
    keep_epochs: bool = False
    device: str = "auto"
    patience: int | None = None  # early stopping on validation AUROC; the evaluated model is then best.pt

    def data_options(self) -> dict:
        return {**DATASET_DEFAULT_OPTIONS.get(self.dataset, {}), **self.options}

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "runs": str(self.runs), "budget": str(self.budget), "root": self.root,
                "image_size": self.image_size, "folds": self.folds, "seeds": list(self.seeds),
                "batch_size": self.batch_size, "options": self.data_options(), "overrides": list(self.overrides),
                "eval_split": self.eval_split, "keep_epochs": self.keep_epochs, "device": self.device,
                "patience": self.patience}

    @classmethod
    def from_dict(cls, d: dict) -> "Study":
        d = dict(d)
        d["runs"] = Path(d["runs"])
        d["budget"] = parse_budget(d["budget"])
        d["seeds"] = tuple(d["seeds"])
        d["overrides"] = tuple(d["overrides"])
        d.setdefault("patience", None)
        return cls(**d)

    @property
    def checkpoint(self) -> str:
        """The checkpoint each job is evaluated with: ``best.pt`` under early stopping, else ``last.pt``."""
        return "best.pt" if self.patience is not None else "last.pt"


@dataclass(frozen=True)
class Job:
    method: str
    fold: int
    seed: int

    def folder(self, study: Study) -> Path:
        return Path(study.runs) / self.method / f"fold{self.fold}-seed{self.seed}"

    @property
    def key(self) -> str:
        return f"{self.method}/fold{self.fold}-seed{self.seed}"


def study_jobs(study: Study, methods: list[Method]) -> list[Job]:
    """All jobs, ordered seed, fold, method: complete method comparisons finish first."""
    if study.folds < 1:
        raise ConfigError(f"--folds: must be >= 1 (1: the dataset's own train/val/test splits), got {study.folds}")
    if study.patience is not None and study.patience < 1:
        raise ConfigError(f"--patience: must be >= 1, got {study.patience}")
    return [Job(m.name, f, s) for s in study.seeds for f in range(study.folds) for m in methods]


def job_config(study: Study, job: Job) -> Config:
    """The full training configuration of a job (budget as the trainer's epochs / max_steps)."""
    from ..config import load_config

    method = get_method(job.method)
    b = study.budget
    settings = {
        "data.name": study.dataset, "data.root": study.root, "data.folds": study.folds,
        "data.fold": job.fold if study.folds > 1 else None,
        "data.image_size": study.image_size, "data.batch_size": study.batch_size,
        "data.options": study.data_options(), "data.val_split": "val",
        "train.seed": job.seed, "train.epochs": b.epochs or 1_000_000, "train.max_steps": b.steps,
        "train.patience": study.patience, "train.progress": False, "train.device": study.device,
        "train.checkpoint_every": CHECKPOINT_EVERY,
        "out": str(job.folder(study)),
    }
    settings.update(method.overrides)
    if any(o.split("=", 1)[0].strip() == "train.checkpoint_every" for o in study.overrides):
        del settings["train.checkpoint_every"]  # the caller's (e.g. fewer writes where steps are fast)
    if method.unlabeled:
        settings.update({"unlabeled.enabled": True, "unlabeled.name": study.dataset, "unlabeled.root": study.root,
                         "unlabeled.split": "unlabeled", "unlabeled.options": study.data_options()})
    cfg = load_config(None, list(study.overrides), {})
    # method and study settings win over the extra overrides only where the method sets them
    data = cfg.to_dict()
    for key, value in settings.items():
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = value
    return config_from_dict(data)


def job_identity(study: Study, job: Job, cfg: Config) -> dict:
    method = get_method(job.method)
    identity = {"method": job.method, "model": method.model or cfg.model.name, "fold": job.fold, "seed": job.seed,
                "budget": str(study.budget), "eval_split": study.eval_split, "config": cfg.to_dict()}
    if method.warm_start is not None:
        identity["warm_start"] = f"{Job(method.warm_start, job.fold, job.seed).key}/{study.checkpoint}"
    return identity


def warm_start_weights(study: Study, job: Job) -> dict | None:
    """The model weights a warm-started job begins with (None for a job trained from scratch)."""
    from ..training.checkpoint import load_checkpoint

    method = get_method(job.method)
    if method.warm_start is None:
        return None
    source = Job(method.warm_start, job.fold, job.seed)
    done = read_done(source.folder(study))
    path = source.folder(study) / study.checkpoint
    if done is None or done.get("budget") != str(study.budget) or not path.is_file():
        raise SibnetError(f"{job.key} starts from the finished {source.key} job's {study.checkpoint}, which is not "
                          f"finished yet: run {method.warm_start!r} first (list it before {job.method!r} in --methods)")
    return load_checkpoint(path)["model"]


# ------------------------------------------------------------------ locks

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire_lock(folder: Path) -> bool:
    """Create ``running.lock`` with this pid; False when a live process holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / "running.lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and _pid_alive(pid):
                return False
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        return True
    return False


def release_lock(folder: Path) -> None:
    lock = folder / "running.lock"
    try:
        if int(lock.read_text().strip() or 0) == os.getpid():
            lock.unlink()
    except (OSError, ValueError):
        pass


# ------------------------------------------------------------------ status

def read_done(folder: Path) -> dict | None:
    path = folder / "done.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def job_status(study: Study, job: Job) -> str:
    """``done``, ``running`` (a live lock), ``partial`` (a checkpoint, not finished) or ``pending``."""
    folder = job.folder(study)
    done = read_done(folder)
    if done is not None and done.get("budget") == str(study.budget):
        return "done"
    lock = folder / "running.lock"
    if lock.is_file():
        try:
            pid = int(lock.read_text().strip() or 0)
        except (OSError, ValueError):
            pid = 0
        if pid and _pid_alive(pid):
            return "running"
    return "partial" if (folder / "last.pt").is_file() else "pending"


# ------------------------------------------------------------------ one job

def _check_identity(folder: Path, identity: dict) -> None:
    path = folder / "job.yaml"
    if not path.is_file():
        return
    old = yaml.safe_load(path.read_text()) or {}
    if isinstance(old.get("config"), dict):  # settings added since the job started: their defaults then
        from ..training.trainer import with_config_defaults

        old["config"] = with_config_defaults(old["config"])
    changed = [k for k in diff_configs({k: v for k, v in old.items() if k != "budget"},
                                       {k: v for k, v in identity.items() if k != "budget"})
               if not any(k == f"config.{b}" for b in FREE_KEYS)]
    if old.get("config", {}).get("loss", {}).get("saliency") is None and identity["config"]["loss"]["saliency"] is None:
        # without saliency terms only the class weighting of the loss matters
        changed = [k for k in changed if not k.startswith("config.loss.") or k == "config.loss.class_weight"]
    if changed:
        raise SibnetError(f"{path}: this job folder was started with other settings ({', '.join(changed[:6])}); "
                          "use another --runs folder or the same settings")
    old_budget = parse_budget(old.get("budget", ""))
    new_budget = parse_budget(identity["budget"])
    if not new_budget.covers(old_budget):
        raise SibnetError(f"{path}: the job already trained with budget {old_budget}; the smaller budget "
                          f"{new_budget} cannot be applied (use another --runs folder)")


def _build_model(method: Method, cfg: Config, info) -> torch.nn.Module | None:
    """An injected model for the methods with a classifier of their own (attention variants, capacity
    scaling); None: the trainer builds the configuration's ``model.name``."""
    if method.model is None or method.model == cfg.model.name:
        return None
    from ..models.classifier import build_classifier
    from ..training.rng import seed_everything

    seed_everything(cfg.train.seed)
    model = build_classifier(method.model, info.in_channels, info.num_classes, dropout=cfg.model.dropout)
    model.model_name = method.model
    return model


def _trained_state(folder: Path) -> dict:
    from ..training.checkpoint import load_checkpoint

    last = folder / "last.pt"
    if not last.is_file():
        return {"epoch": 0, "step": 0, "stop_reason": ""}
    return load_checkpoint(last)["state"]


def _finished(state: dict, budget: Budget) -> bool:
    if state.get("stop_reason"):  # early stopping (only when a user override turns it on)
        return True
    return (budget.epochs is not None and state["epoch"] >= budget.epochs) or \
        (budget.steps is not None and state["step"] >= budget.steps)


def _val_loss(model, dataset, task: str, class_weight, batch_size: int, device) -> float:
    """Mean weighted BCE (multi-label) / CE (single-label) of ``dataset`` in eval mode."""
    from torch.utils.data import DataLoader

    from ..losses.classification import weighted_bce, weighted_ce

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            logits = model(batch["image"].to(device)).float()
            y = batch["label"].float().to(device)
            y = torch.where(y == -1, torch.full_like(y, float("nan")), y)
            if task == "multiclass":
                loss = weighted_ce(logits, y, class_weight, reduction="sum")
                n = y.shape[0]
            else:
                loss = weighted_bce(logits, y, class_weight, reduction="sum")
                n = int((~torch.isnan(y)).sum())
            total += float(loss)
            count += n
    return total / max(count, 1)


def _append_val_loss(folder: Path, epoch: int, step: int, value: float) -> None:
    path = folder / "val_loss.csv"
    rows = read_val_loss(folder)
    rows = [r for r in rows if r["epoch"] < epoch] + [{"epoch": epoch, "step": step, "val_loss": value}]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("epoch,step,val_loss\n" + "".join(f"{r['epoch']},{r['step']},{r['val_loss']:.6g}\n" for r in rows))
    os.replace(tmp, path)


def read_val_loss(folder: Path) -> list[dict]:
    path = Path(folder) / "val_loss.csv"
    if not path.is_file():
        return []
    lines = path.read_text().strip().splitlines()[1:]
    out = []
    for ln in lines:
        e, s, v = ln.split(",")
        out.append({"epoch": int(e), "step": int(s), "val_loss": float(v)})
    return out


def eval_dataset(study: Study, cfg: Config):
    """The evaluation split (see module doc) and its name."""
    from ..data.registry import build_dataset

    d = cfg.data
    common = dict(root=d.root, image_size=d.image_size, fold=d.fold, folds=d.folds, seed=data_seed(cfg), **d.options)
    if study.eval_split in ("auto", "test"):
        try:
            test = build_dataset(d.name, split="test", **common)
        except (ConfigError, SibnetError):
            test = None
        if test is not None and len(test) > 0:
            return test, "test"
        if study.eval_split == "test":
            raise SibnetError(f"dataset {d.name!r} has no nonempty 'test' split; use --eval-split val or auto")
    return build_dataset(d.name, split="val", **common), "val"


def train_split(cfg: Config):
    from ..data.registry import build_dataset

    d = cfg.data
    return build_dataset(d.name, split="train", root=d.root, image_size=d.image_size, fold=d.fold, folds=d.folds,
                         seed=data_seed(cfg), **d.options)


def load_job_model(study: Study, job: Job, cfg: Config, path: Path | None = None, bn_stats: str = "stored",
                   train=None):
    """``(model, meta)`` of a job's checkpoint (``study.checkpoint`` unless ``path``), ready for evaluation.

    ``bn_stats="stored"`` keeps the BatchNorm running statistics that training left; ``"train"``
    re-estimates them with the final weights on the fold's training split
    (:func:`sibnet.evaluation.batchnorm.recalibrate_batchnorm`, seeded by the job's seed); ``train``
    passes that split when the caller already built it (several checkpoints of one job).
    """
    from ..evaluation.batchnorm import BN_STATS, recalibrate_batchnorm
    from ..training.checkpoint import load_model_from_checkpoint

    if bn_stats not in BN_STATS:
        raise ConfigError(f"--bn-stats: expected one of {', '.join(BN_STATS)}, got {bn_stats!r}")
    model, meta = load_model_from_checkpoint(path or job.folder(study) / study.checkpoint)
    if bn_stats == "train":
        recalibrate_batchnorm(model, train if train is not None else train_split(cfg), batch_size=study.batch_size, seed=job.seed,
                              name=f"the training split of {job.key}")
    return model, meta


def eval_cache(folder: Path, name: str, bn_stats: str) -> Path:
    """The cache file of an evaluation of a job (``noise.json``; ``noise.bn-train.json`` for re-estimated
    BatchNorm statistics), so both evaluations are kept side by side."""
    return folder / (f"{name}.json" if bn_stats == "stored" else f"{name}.bn-{bn_stats}.json")


def run_job(study: Study, job: Job, log=print) -> dict:
    """Train (or continue) one job, evaluate it and write ``done.json``; returns its content.

    Returns ``{"status": "skipped"}`` plus the old record when the job was already done, and
    ``{"status": "busy"}`` when another live process holds its lock.
    """
    from ..training import Trainer
    from ..training.build import build_datasets, dataset_labels
    from ..training.checkpoint import FORMAT, VERSION, load_checkpoint, save_checkpoint

    folder = job.folder(study)
    method = get_method(job.method)
    cfg = job_config(study, job)
    identity = job_identity(study, job, cfg)
    _check_identity(folder, identity)
    done = read_done(folder)
    if done is not None and done.get("budget") == str(study.budget):
        return {**done, "status": "skipped"}
    if not acquire_lock(folder):
        return {"status": "busy", "job": job.key}
    try:
        (folder / "job.yaml").write_text(yaml.safe_dump(identity, sort_keys=False))
        (folder / "done.json").unlink(missing_ok=True)
        datasets = build_datasets(cfg)
        train, val, _ = datasets
        info = train.info
        from ..losses.classification import class_weights_from_labels

        cw = torch.as_tensor(class_weights_from_labels(dataset_labels(train), info.task,
                                                       class_names=info.class_names), dtype=torch.float32)
        started = time.perf_counter()
        state = _trained_state(folder)
        budget = study.budget
        while not _finished(state, budget):
            next_epochs = state["epoch"] + 1
            step_cfg = copy.deepcopy(cfg)
            step_cfg.train.epochs = next_epochs
            model = _build_model(method, cfg, info)
            resume = folder / "last.pt" if (folder / "last.pt").is_file() else None
            if resume is None and method.warm_start is not None:
                if model is None:
                    from ..models.classifier import build_classifier

                    model = build_classifier(cfg.model.name, info.in_channels, info.num_classes,
                                             dropout=cfg.model.dropout)
                    model.model_name = cfg.model.name
                model.load_state_dict(warm_start_weights(study, job))
            Trainer(step_cfg, datasets=datasets, model=model).fit(resume=resume, overwrite=resume is None)
            ckpt = load_checkpoint(folder / "last.pt")
            state = ckpt["state"]
            from ..training.checkpoint import load_model_from_checkpoint

            net, _ = load_model_from_checkpoint(folder / "last.pt")
            vloss = _val_loss(net, val, info.task, cw, cfg.data.batch_size, "cpu") if val is not None else math.nan
            _append_val_loss(folder, state["epoch"], state["step"], vloss)
            if study.keep_epochs:
                save_checkpoint(folder / f"epoch{state['epoch']}.pt", {"format": FORMAT, "version": VERSION,
                                                                      "model": ckpt["model"], "meta": ckpt["meta"]})
            log(f"{job.key}: epoch {state['epoch']} step {state['step']} val AUROC "
                f"{state['history'][-1].get('val_auroc', math.nan):.4f} val loss {vloss:.4f}")
            if state["epoch"] < next_epochs:  # the trainer stopped early (max_steps inside the epoch)
                break
        record = evaluate_job(study, job, cfg)
        record.update({"state": {"epochs": state["epoch"], "steps": state["step"]},
                       "seconds_this_call": round(time.perf_counter() - started, 1)})
        tmp = folder / f".done.json.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, folder / "done.json")
        return {**record, "status": "trained"}
    finally:
        release_lock(folder)


def predict_job(folder: Path, dataset, batch_size: int = 32, checkpoint: str = "last.pt"):
    """(model, meta, prediction) of the job's ``checkpoint`` on ``dataset``."""
    from ..evaluation.run import predict
    from ..training.checkpoint import load_model_from_checkpoint

    model, meta = load_model_from_checkpoint(Path(folder) / checkpoint)
    pred = predict(model, dataset, meta["task"], batch_size=batch_size)
    return model, meta, pred


def evaluate_job(study: Study, job: Job, cfg: Config) -> dict:
    """Metrics of the evaluated checkpoint (``study.checkpoint``) on the evaluation split; also writes
    ``predictions.npz``."""
    from ..evaluation.classification import classification_metrics
    from ..evaluation.run import metric_labels

    folder = job.folder(study)
    dataset, split = eval_dataset(study, cfg)
    _, meta, pred = predict_job(folder, dataset, checkpoint=study.checkpoint)
    y, masked = metric_labels(pred.labels)
    metrics = classification_metrics(pred.probs, y, class_names=meta["class_names"], n_boot=0)
    np.savez_compressed(folder / "predictions.npz", probs=pred.probs, labels=pred.labels)
    per_label = {k: {"auroc": v["auroc"], "auprc": v["auprc"], "n_pos": v["n_pos"]}
                 for k, v in metrics["per_label"].items()}
    return {"method": job.method, "fold": job.fold, "seed": job.seed, "budget": str(study.budget),
            "checkpoint": study.checkpoint, "eval_split": split, "n_eval": int(len(dataset)), "n_uncertain_masked": masked,
            "class_names": list(meta["class_names"]), "mean_auroc": metrics["mean"]["auroc"],
            "mean_auprc": metrics["mean"]["auprc"], "per_label": per_label, "notes": metrics["notes"]}


# ------------------------------------------------------------------ many jobs

def _worker(study_dict: dict, job: tuple, threads: int) -> dict:
    torch.set_num_threads(max(1, threads))
    study = Study.from_dict(study_dict)
    j = Job(*job)
    try:
        return run_job(study, j, log=lambda msg: print(msg, flush=True))
    except SibnetError as exc:
        return {"status": "failed", "job": j.key, "error": str(exc)}


def run_jobs(study: Study, jobs: list[Job], n_parallel: int = 1, log=print) -> list[dict]:
    """Run the jobs that are not done (in ``n_parallel`` processes when > 1); returns one result each.

    A job that fails (a :class:`SibnetError`) is reported and the others go on.
    """
    results = []
    if n_parallel <= 1:
        for job in jobs:
            try:
                r = run_job(study, job, log=log)
            except SibnetError as exc:
                r = {"status": "failed", "job": job.key, "error": str(exc)}
            results.append({**r, "job": job.key})
            log(f"{job.key}: {r['status']}" + (f" ({r['error']})" if r.get("error") else ""))
        return results
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or 1) // n_parallel)
    with ProcessPoolExecutor(max_workers=n_parallel, mp_context=mp.get_context("spawn")) as pool:
        futures = [(job, pool.submit(_worker, study.to_dict(), (job.method, job.fold, job.seed), threads))
                   for job in jobs]
        for job, fut in futures:
            r = fut.result()
            results.append({**r, "job": job.key})
            log(f"{job.key}: {r['status']}" + (f" ({r['error']})" if r.get("error") else ""))
    return results


def collect(study: Study, jobs: list[Job]) -> dict[Job, dict]:
    """``done.json`` records of the finished jobs (for the study's budget)."""
    out = {}
    for job in jobs:
        rec = read_done(job.folder(study))
        if rec is not None and rec.get("budget") == str(study.budget):
            _check_identity(job.folder(study), job_identity(study, job, job_config(study, job)))
            out[job] = rec
    return out


__all__ = ["Budget", "Job", "Study", "collect", "eval_cache", "eval_dataset", "job_config", "job_status",
           "load_job_model", "parse_budget",
           "predict_job", "read_done", "read_val_loss", "run_job", "run_jobs", "study_jobs", "train_split"]
