"""The study and its jobs: what a table's jobs share, one job's training configuration and identity.

One (method, fold, seed) is one :class:`Job`, a training run in its own folder
``<runs>/<method>/fold<F>-seed<S>`` (the folder's files: :mod:`sibnet.experiments.store`).

Conventions
-----------
* Budget: ``epochs=E`` and/or ``steps=N`` (optimizer steps); training stops at whichever comes
  first. Without ``patience`` early stopping is off: the evaluated model is ``last.pt``, the model
  at the end of the budget. With ``patience`` P, a job stops after P epochs without a better
  validation AUROC and the evaluated model is ``best.pt`` (the epoch of the best validation AUROC;
  the validation split selects it, the evaluation split never does).
* ``folds``: 2 or more is a cross-validation of the dataset's training pool (each fold's held-out
  part is its validation split); 1 means the dataset's own ``train``/``val``/``test`` splits (one
  "fold", job folders ``fold0-seedS``), e.g. the synthetic data at its full 1000/250/250 sizes.
* A job writes a mid-epoch checkpoint every ``CHECKPOINT_EVERY`` optimizer steps, so a killed
  job (e.g. out of memory) loses at most those steps.
* Identity (:func:`check_identity`): a folder whose ``job.yaml`` differs from the requested job in
  anything but the budget (and the settings that do not change results, ``FREE_KEYS``: checkpoint
  frequency, logging, device, loader workers) is an error (choose another ``--runs``); a larger
  budget continues a finished job, a smaller one is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config, config_from_dict, diff_configs, load_config
from ..errors import ConfigError, SibnetError
from ..training.trainer import with_config_defaults
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

    def reached(self, epoch: int, step: int) -> bool:
        """True when a run at ``epoch`` and ``step`` has used this budget up."""
        return (self.epochs is not None and epoch >= self.epochs) or (self.steps is not None and step >= self.steps)


def parse_budget(text: str, flag: str = "--budget") -> Budget:
    """``"epochs=3"``, ``"steps=200"`` or ``"epochs=3,steps=200"`` (``flag`` names the argument in errors)."""
    values: dict[str, int] = {}
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        key, _, raw = part.partition("=")
        key = {"epoch": "epochs", "step": "steps", "iterations": "steps"}.get(key.strip(), key.strip())
        if key not in ("epochs", "steps") or not raw.strip().isdigit() or int(raw) < 1:
            raise ConfigError(f"{flag}: expected epochs=N and/or steps=N (N >= 1), got {part!r}")
        values[key] = int(raw)
    if not values:
        raise ConfigError(f"{flag}: expected epochs=N and/or steps=N, got {text!r}")
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
    warm_budget: Budget | None = None  # the budget of warm-started methods (None: ``budget``, as every job)
    held_out_test: bool = False  # each fold's part is the test split, the next fold's validates (data.held_out_test)

    def job_budget(self, job: "Job") -> Budget:
        """The budget ``job`` trains to: ``warm_budget`` for a warm-started method when it is set
        (fine-tuning a converged model for a few epochs), else the study's ``budget``."""
        if self.warm_budget is not None and get_method(job.method).warm_start is not None:
            return self.warm_budget
        return self.budget

    @property
    def budget_label(self) -> str:
        """The budgets of the study in words (table headers, evaluation caches)."""
        return str(self.budget) + (f"; warm-started jobs {self.warm_budget}" if self.warm_budget else "")

    def data_options(self) -> dict:
        return {**DATASET_DEFAULT_OPTIONS.get(self.dataset, {}), **self.options}

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "runs": str(self.runs), "budget": str(self.budget), "root": self.root,
                "image_size": self.image_size, "folds": self.folds, "seeds": list(self.seeds),
                "batch_size": self.batch_size, "options": self.data_options(), "overrides": list(self.overrides),
                "eval_split": self.eval_split, "keep_epochs": self.keep_epochs, "device": self.device,
                "patience": self.patience,
                "warm_budget": str(self.warm_budget) if self.warm_budget is not None else None,
                "held_out_test": self.held_out_test}

    @classmethod
    def from_dict(cls, d: dict) -> "Study":
        d = dict(d)
        d["runs"] = Path(d["runs"])
        d["budget"] = parse_budget(d["budget"])
        d["seeds"] = tuple(d["seeds"])
        d["overrides"] = tuple(d["overrides"])
        d.setdefault("patience", None)
        d.setdefault("held_out_test", False)
        d["warm_budget"] = parse_budget(d["warm_budget"]) if d.get("warm_budget") else None
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
    method = get_method(job.method)
    b = study.job_budget(job)
    settings = {
        "data.name": study.dataset, "data.root": study.root, "data.folds": study.folds,
        "data.fold": job.fold if study.folds > 1 else None, "data.held_out_test": study.held_out_test,
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


# ------------------------------------------------------------------ identity

def job_identity(study: Study, job: Job, cfg: Config) -> dict:
    """What makes a job the same job (written to its ``job.yaml``): method, model, fold, seed, budget,
    evaluation split, full configuration and, for a warm-started job, the checkpoint it starts from."""
    method = get_method(job.method)
    identity = {"method": job.method, "model": method.model or cfg.model.name, "fold": job.fold, "seed": job.seed,
                "budget": str(study.job_budget(job)), "eval_split": study.eval_split, "config": cfg.to_dict()}
    if method.warm_start is not None:
        identity["warm_start"] = f"{Job(method.warm_start, job.fold, job.seed).key}/{study.checkpoint}"
    return identity


def check_identity(old: dict, identity: dict, path: Path) -> None:
    """Refuse ``identity`` where the job's recorded identity ``old`` (read from ``path``) differs in a
    setting that changes results, or where its budget is smaller than the one already trained."""
    old = dict(old)
    if isinstance(old.get("config"), dict):  # settings added since the job started: their defaults then
        old["config"] = with_config_defaults(old["config"])
    changed = [k for k in diff_configs({k: v for k, v in old.items() if k != "budget"},
                                       {k: v for k, v in identity.items() if k != "budget"})
               if not any(k == f"config.{b}" for b in FREE_KEYS)]
    if old.get("config", {}).get("loss", {}).get("saliency") is None and identity["config"]["loss"]["saliency"] is None:
        # without saliency terms only the class weighting of the loss matters
        changed = [k for k in changed if not k.startswith("config.loss.") or k == "config.loss.class_weight"]
    if changed:
        def value(record: dict, key: str):
            for part in key.split("."):
                record = record.get(part) if isinstance(record, dict) else None
            return record

        shown = ", ".join(f"{k}: {value(old, k)!r} there, {value(identity, k)!r} now" for k in changed[:4])
        raise SibnetError(f"{path}: this job folder was started with other settings ({shown}"
                          f"{', ...' if len(changed) > 4 else ''}); use another --runs folder or the same settings "
                          "(e.g. KEY=VALUE overrides after the table's name)")
    old_budget = parse_budget(old.get("budget", ""))
    new_budget = parse_budget(identity["budget"])
    if not new_budget.covers(old_budget):
        raise SibnetError(f"{path}: the job already trained with budget {old_budget}; the smaller budget "
                          f"{new_budget} cannot be applied (use another --runs folder)")


__all__ = ["BUDGET_KEYS", "CHECKPOINT_EVERY", "FREE_KEYS", "Budget", "Job", "Study", "check_identity", "job_config",
           "job_identity", "parse_budget", "study_jobs"]
