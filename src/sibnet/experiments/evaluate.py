"""Evaluating a job: its data splits, its evaluated model, predictions, metrics and weighted loss.

Conventions
-----------
* Evaluation split: ``auto`` = the dataset's official ``test`` split when it is nonempty, else the
  fold's held-out 20% (``val``; e.g. the NIH sample, whose images all lie in the official
  train_val list). Uncertain labels (-1) are masked out of AUROC/AUPRC.
* The evaluated model is the job's ``study.checkpoint`` (``last.pt``; ``best.pt`` under early
  stopping), see :mod:`sibnet.experiments.study`.
* The weighted loss (the jobs' validation loss, Fig. 4, and the capacity study's evaluation loss)
  is the training loss without saliency terms: weighted BCE (multi-label) or CE (single-label) with
  the class weights of the fold's training labels, in eval mode.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..config import Config
from ..errors import ConfigError, SibnetError
from ..evaluation.batchnorm import BN_STATS, recalibrate_batchnorm
from ..evaluation.classification import classification_metrics
from ..evaluation.run import metric_labels, predict
from ..losses.classification import weighted_bce, weighted_ce
from ..training.build import build_split
from ..training.checkpoint import load_model_from_checkpoint
from .store import write_predictions
from .study import Job, Study

# ------------------------------------------------------------------ data

def train_split(cfg: Config):
    """The fold's training split."""
    return build_split(cfg, "train")


def eval_dataset(study: Study, cfg: Config):
    """The evaluation split (see module doc) and its name."""
    if study.eval_split in ("auto", "test"):
        try:
            test = build_split(cfg, "test")
        except (ConfigError, SibnetError):
            test = None
        if test is not None and len(test) > 0:
            return test, "test"
        if study.eval_split == "test":
            raise SibnetError(f"dataset {cfg.data.name!r} has no nonempty 'test' split; use --eval-split val or auto")
    return build_split(cfg, "val"), "val"


# ------------------------------------------------------------------ the evaluated model

def load_job_model(study: Study, job: Job, cfg: Config, path: Path | None = None, bn_stats: str = "stored",
                   train=None):
    """``(model, meta)`` of a job's checkpoint (``study.checkpoint`` unless ``path``), ready for evaluation.

    ``bn_stats="stored"`` keeps the BatchNorm running statistics that training left; ``"train"``
    re-estimates them with the final weights on the fold's training split
    (:func:`sibnet.evaluation.batchnorm.recalibrate_batchnorm`, seeded by the job's seed); ``train``
    passes that split when the caller already built it (several checkpoints of one job).
    """
    if bn_stats not in BN_STATS:
        raise ConfigError(f"--bn-stats: expected one of {', '.join(BN_STATS)}, got {bn_stats!r}")
    model, meta = load_model_from_checkpoint(path or job.folder(study) / study.checkpoint)
    if bn_stats == "train":
        recalibrate_batchnorm(model, train if train is not None else train_split(cfg), batch_size=study.batch_size,
                              seed=job.seed, name=f"the training split of {job.key}")
    return model, meta


def predict_job(folder: Path, dataset, batch_size: int = 32, checkpoint: str = "last.pt"):
    """``(model, meta, predictions)`` of the job's ``checkpoint`` on ``dataset``: the model in eval
    mode, its checkpoint's ``meta`` and :func:`sibnet.evaluation.run.predict`'s probabilities."""
    model, meta = load_model_from_checkpoint(Path(folder) / checkpoint)
    return model, meta, predict(model, dataset, meta["task"], batch_size=batch_size)


def evaluate_job(study: Study, job: Job, cfg: Config) -> dict:
    """Metrics of the evaluated checkpoint (``study.checkpoint``) on the evaluation split (the part of
    ``done.json`` that describes the model); also writes ``predictions.npz``."""
    folder = job.folder(study)
    dataset, split = eval_dataset(study, cfg)
    _, meta, pred = predict_job(folder, dataset, checkpoint=study.checkpoint)
    y, masked = metric_labels(pred.labels)
    metrics = classification_metrics(pred.probs, y, class_names=meta["class_names"], n_boot=0)
    write_predictions(folder, pred.probs, pred.labels)
    per_label = {k: {"auroc": v["auroc"], "auprc": v["auprc"], "n_pos": v["n_pos"]}
                 for k, v in metrics["per_label"].items()}
    return {"method": job.method, "fold": job.fold, "seed": job.seed, "budget": str(study.job_budget(job)),
            "checkpoint": study.checkpoint, "eval_split": split, "n_eval": int(len(dataset)),
            "n_uncertain_masked": masked, "class_names": list(meta["class_names"]),
            "mean_auroc": metrics["mean"]["auroc"], "mean_auprc": metrics["mean"]["auprc"], "per_label": per_label,
            "notes": metrics["notes"]}


# ------------------------------------------------------------------ weighted loss

def weighted_loss(model, dataset, task: str, class_weight, batch_size: int, device="cpu") -> float:
    """Mean weighted BCE (multi-label) / CE (single-label) of ``dataset`` in eval mode (the model is
    left in eval mode): the jobs' validation loss."""
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


__all__ = ["build_split", "eval_dataset", "evaluate_job", "load_job_model", "predict_job",
           "train_split", "weighted_loss"]
