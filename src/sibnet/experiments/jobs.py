"""Resumable experiment jobs: one (method, fold, seed) = one training run in its own folder.

The names of this module, kept for the code that imports them from here; they live in:

* :mod:`sibnet.experiments.study`: the budget, the study, its jobs, a job's configuration and identity;
* :mod:`sibnet.experiments.store`: the files of a job's folder (``done.json``, ``job.yaml``, the lock,
  ``val_loss.csv``, evaluation caches) and the jobs' status;
* :mod:`sibnet.experiments.evaluate`: a job's data splits, evaluated model, predictions and metrics;
* :mod:`sibnet.experiments.runner`: training a job to its budget, and many jobs in processes.
"""

from __future__ import annotations

from .evaluate import eval_dataset, load_job_model, predict_job, train_split
from .runner import run_job, run_jobs
from .store import collect, eval_cache, job_status, read_done, read_val_loss
from .study import Budget, Job, Study, job_config, parse_budget, study_jobs

__all__ = ["Budget", "Job", "Study", "collect", "eval_cache", "eval_dataset", "job_config", "job_status",
           "load_job_model", "parse_budget", "predict_job", "read_done", "read_val_loss", "run_job", "run_jobs",
           "study_jobs", "train_split"]
