"""``capacity``: methods retrained with fewer or more parameters (the paper's section 3.5.6, Fig. 12).

Every (base method, multiplier m) is a method ``capacity-<base>-<m>`` (m written as Python's
``%g``): the base method's loss settings on a width-scaled DenseNet-121 with about ``m x P``
parameters, P being the standard DenseNet-121's count for the dataset's channels and classes
(``densenet121-x<m>``, rule in :mod:`sibnet.models.classifier`). Base methods with attention
(``se``, ``cbam``) get the same widths with their attention after each dense block
(``densenet121-se-x<m>``, ``densenet121-cbam-x<m>``); the table gives their own parameter counts. The
methods are named by :func:`sibnet.experiments.methods.capacity_method`; their jobs are ordinary
resumable study jobs (fold x seed, :mod:`sibnet.experiments.runner`).

Per (base, m) the table gives, as mean (sd) over the finished runs (folds x seeds, sd ddof = 1):

* validation loss: the last epoch's entry of the job's ``val_loss.csv`` (weighted BCE / CE of the
  fold's validation split, as Fig. 4 of table1 reads it);
* evaluation loss: the same weighted loss on the evaluation split with the class weights of the
  validation loss (``class_weights_from_labels`` of the fold's training labels), computed from the
  job's ``predictions.npz`` (float32 probabilities of ``last.pt``, :func:`weighted_loss_from_probs`)
  unless a term of it is too close to saturation for float32 (then from the logits of ``last.pt``
  re-run on the evaluation split, exactly as the validation loss);
* evaluation AUROC: ``mean_auroc`` of the job's ``done.json``.

``fig12_capacity.png`` draws the three against the parameter count in multiples of P.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch

from ..config import Config
from ..errors import ConfigError
from ..evaluation.statistics import finite_mean, finite_sd, mean_sd
from ..models.classifier import MAX_MULTIPLIER, MIN_MULTIPLIER, WIDTH_PREFIX, densenet121_width, parameter_count
from ..report.figures import pyplot, save_figure
from ..training.checkpoint import load_model_from_checkpoint
from ..training.labels import dataset_class_weights
from .evaluate import eval_dataset, train_split, weighted_loss
from .methods import Method, capacity_method, capacity_methods
from .store import collect, read_predictions, read_val_loss
from .study import Job, Study, job_config
from .tables import study_header, write_outputs

DEFAULT_CAPACITIES = (0.2, 0.5, 1.0, 1.5, 2.0)
DEFAULT_BASES = "baseline,sibnet"
# float32 probabilities equal to 0 or 1 (|logit| beyond about 88 / 17) are clipped to these
P_LOW, P_HIGH = float(np.finfo(np.float32).tiny), 1.0 - 2.0 ** -24
# a term -log(1 - p) with 1 - p below this is imprecise from float32 p (spacing 6e-8 near 1: an
# error up to 6e-4 at the bound); such a job's loss is recomputed from its model's logits
PRECISE_TAIL = 1e-4


def parse_capacities(text: str | None) -> tuple[float, ...]:
    """``--capacities``: comma-separated multipliers (default :data:`DEFAULT_CAPACITIES`)."""
    if text is None:
        return DEFAULT_CAPACITIES
    out: list[float] = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        try:
            v = float(part)
        except ValueError:
            raise ConfigError(f"--capacities: {part!r} is not a number") from None
        if not (math.isfinite(v) and MIN_MULTIPLIER <= v <= MAX_MULTIPLIER):
            raise ConfigError(f"--capacities: {part} is outside [{MIN_MULTIPLIER:g}, {MAX_MULTIPLIER:g}] "
                              "(multiples of the standard DenseNet-121's parameter count)")
        if v not in out:
            out.append(v)
    if not out:
        raise ConfigError(f"--capacities: no multiplier given in {text!r}")
    return tuple(out)


# ------------------------------------------------------------------ evaluation loss

def weighted_loss_from_probs(probs, labels, class_weight, task: str = "multilabel") -> tuple[float, int]:
    """(loss, number of imprecise terms) of stored probabilities, as the jobs' validation loss.

    Multi-label: the positively weighted BCE ``-(w_k y log p + (1 - y) log(1 - p))`` summed over the
    observed entries (label -1 (uncertain) or nan: left out) and divided by their number (as
    ``weighted_bce(logits, y, w)`` of the logits with ``p = sigmoid(logit)``). Single-label
    (``multiclass``, labels one-hot rows or indices): ``sum_i w_{y_i} (-log p_{i, y_i})`` divided
    by the number of rows. Probabilities stored as exactly 0 or 1 (float32 saturation) are clipped
    to [:data:`P_LOW`, :data:`P_HIGH`]. Imprecise terms (counted): those of a clipped probability
    and ``-log(1 - p)`` terms with ``1 - p <`` :data:`PRECISE_TAIL`; with none, the result equals
    the logits' loss up to float32 rounding of the probabilities.
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    w = np.asarray(class_weight, dtype=np.float64).reshape(-1)
    if p.ndim != 2 or w.shape != (p.shape[1],):
        raise ConfigError(f"probabilities {p.shape} and class weights {w.shape} do not match (N, K) and (K,)")
    pc = np.clip(p, P_LOW, P_HIGH)
    if task == "multiclass":
        index = y.astype(int) if y.ndim == 1 else np.nan_to_num(y).argmax(axis=1)
        keep = np.ones(len(p), bool) if y.ndim == 1 else ~np.isnan(y).any(axis=1)
        rows = np.flatnonzero(keep)
        terms = -w[index[rows]] * np.log(pc[rows, index[rows]])
        return float(terms.sum() / max(len(p), 1)), int((p[rows, index[rows]] < P_LOW).sum())
    if y.shape != p.shape:
        raise ConfigError(f"labels {y.shape} do not match the probabilities {p.shape}")
    observed = ~np.isnan(y) & (y != -1)
    yo = np.where(observed, y, 0.0)
    terms = -(w * yo * np.log(pc) + (1.0 - yo) * np.log1p(-pc))
    imprecise = observed & (((p < P_LOW) & (yo > 0)) | ((1.0 - p < PRECISE_TAIL) & (yo < 1)))
    return float(terms[observed].sum() / max(int(observed.sum()), 1)), int(imprecise.sum())


def eval_loss_from_model(study: Study, job: Job, cfg: Config, class_weight, task: str) -> float:
    """The evaluation loss from the logits of the job's ``last.pt`` (as ``run_job``'s validation loss)."""
    dataset, _ = eval_dataset(study, cfg)
    model, _ = load_model_from_checkpoint(job.folder(study) / "last.pt")
    return weighted_loss(model, dataset, task, torch.as_tensor(class_weight, dtype=torch.float32),
                         cfg.data.batch_size, "cpu")


def class_weights(cfg: Config) -> tuple[np.ndarray, object]:
    """(class weights, dataset info) of a job: as ``run_job`` computes them for its validation loss."""
    train = train_split(cfg)
    with warnings.catch_warnings():  # a class without positives: the job itself warned when it trained
        warnings.simplefilter("ignore", UserWarning)
        w = dataset_class_weights(train)
    return np.asarray(w, dtype=np.float64), train.info


# ------------------------------------------------------------------ table and figure

def summarise_capacity(study: Study, bases: list[Method], capacities, jobs: list[Job]) -> dict:
    """Per (base, m): the per-run values (no files written). See the module doc."""
    records = collect(study, jobs)
    weights: dict[tuple[int, int], tuple] = {}
    info = None
    rows, recomputed = [], []
    for b in bases:
        for m in capacities:
            meth = capacity_method(b, m)
            runs = sorted(((j, r) for j, r in records.items() if j.method == meth.name),
                          key=lambda t: (t[0].seed, t[0].fold))
            entry = {"base": b.name, "method": meth.name, "model": meth.model, "multiplier": float(m),
                     "runs": len(runs), "jobs": sum(1 for j in jobs if j.method == meth.name), "val_loss": [],
                     "eval_loss": [], "auroc": [], "eval_splits": sorted({r["eval_split"] for _, r in runs})}
            for job, rec in runs:
                folder = job.folder(study)
                vl = read_val_loss(folder)
                entry["val_loss"].append(vl[-1]["val_loss"] if vl else math.nan)
                key = (job.fold, job.seed)
                if key not in weights:
                    weights[key] = class_weights(job_config(study, job))
                w, info = weights[key]
                pred = read_predictions(folder)
                loss, imprecise = weighted_loss_from_probs(pred["probs"], pred["labels"], w, info.task)
                if imprecise:
                    loss = eval_loss_from_model(study, job, job_config(study, job), w, info.task)
                    recomputed.append(f"{job.key} ({imprecise} terms)")
                entry["eval_loss"].append(loss)
                entry["auroc"].append(math.nan if rec["mean_auroc"] is None else float(rec["mean_auroc"]))
            rows.append(entry)
    if info is not None:
        for e in rows:
            width = dict(densenet121_width(e["multiplier"], info.in_channels, info.num_classes))
            if not e["model"].startswith(WIDTH_PREFIX):  # attention adds its own parameters
                width["parameters"] = parameter_count(e["model"], info.in_channels, info.num_classes)
                width["ratio"] = width["parameters"] / width["reference"]
            e["width"] = width
    return {"rows": rows, "records": records, "recomputed": recomputed, "info": info}


CSV_COLUMNS = ["method", "base_method", "multiplier", "growth_rate", "init_features", "parameters", "parameter_ratio",
               "runs", "jobs", "val_loss_mean", "val_loss_sd", "eval_loss_mean", "eval_loss_sd", "auroc_mean",
               "auroc_sd"]


def _header_notes(s: dict, bases: list[Method], capacities, n_jobs: int) -> list[str]:
    """The table's own header lines (after :func:`study_header`'s)."""
    extra = [f"capacities: m in {[float(f'{m:g}') for m in capacities]} x P, P = parameters of the standard "
             "DenseNet-121 for the dataset's channels and classes; width rule: sibnet.models.classifier "
             "(growth rate and initial features scaled by one width factor, depth unchanged)",
             f"base methods: {', '.join(b.name for b in bases)}",
             f"finished jobs: {len(s['records'])} of {n_jobs}",
             "validation loss: weighted BCE of the fold's validation split after the last epoch (val_loss.csv); "
             "evaluation loss: the same weighted BCE on the evaluation split (class weights from the fold's training "
             "labels) from predictions.npz, or from the model's logits where float32 probabilities are too close "
             "to 0 or 1; AUROC: mean over labels on the evaluation split; "
             "each shown as mean (sd) over the finished runs (runs: finished/total)"]
    splits = sorted({sp for e in s["rows"] for sp in e["eval_splits"]})
    if splits:
        extra.append(f"evaluation split: {', '.join(splits)}")
    if s["recomputed"]:
        extra.append(f"evaluation loss recomputed from the model's logits for {len(s['recomputed'])} run(s) whose "
                     f"stored float32 probabilities are too close to 0 or 1: {', '.join(s['recomputed'])}")
    if s["info"] is not None:
        e0 = s["rows"][0]["width"]
        extra.append(f"P = {e0['reference']:,} parameters ({s['info'].in_channels} input channel(s), "
                     f"{s['info'].num_classes} classes)")
    return extra


def _rows(e: dict) -> tuple[list, dict]:
    """(Markdown row, CSV row) of one (base, m) entry of :func:`summarise_capacity`."""
    wd = e.get("width")
    md = [e["base"], f"{e['multiplier']:g}", f"{wd['growth_rate']} / {wd['init_features']}" if wd else "n/a",
          f"{wd['parameters']:,} ({wd['ratio']:.3f})" if wd else "n/a", f"{e['runs']}/{e['jobs']}"]
    md += [mean_sd(e[k], 4 if k != "auroc" else 3) if e["runs"] else "n/a" for k in ("val_loss", "eval_loss", "auroc")]
    row = {"method": e["method"], "base_method": e["base"], "multiplier": e["multiplier"],
           "growth_rate": wd["growth_rate"] if wd else None, "init_features": wd["init_features"] if wd else None,
           "parameters": wd["parameters"] if wd else None, "parameter_ratio": wd["ratio"] if wd else None,
           "runs": e["runs"], "jobs": e["jobs"],
           **{f"{k}_{stat}": (f(e[k]) if e["runs"] else None) for k in ("val_loss", "eval_loss", "auroc")
              for stat, f in (("mean", finite_mean), ("sd", finite_sd))}}
    return md, row


def write_capacity(study: Study, bases: list[Method], capacities, jobs: list[Job], out: Path, command: str) -> dict:
    """Write ``capacity.md``, ``capacity.csv`` and (with a finished job) ``fig12_capacity.png`` to ``out``;
    returns their paths plus ``summary`` (:func:`summarise_capacity`)."""
    s = summarise_capacity(study, bases, capacities, jobs)
    header = study_header(command, study, capacity_methods(bases, capacities),
                          _header_notes(s, bases, capacities, len(jobs)))
    cols = ["method", "m", "growth / init features", "parameters (x P)", "runs", "validation loss",
            "evaluation loss", "evaluation AUROC"]
    rows = [_rows(e) for e in s["rows"]]
    figs = []
    if any(e["runs"] for e in s["rows"]):
        figs.append(str(_figure(study, s, Path(out) / "fig12_capacity.png")))
    paths = write_outputs(out, "capacity", f"Capacity: methods with fewer or more parameters on {study.dataset}",
                          header, [("Loss and AUROC against the parameter count", cols, [md for md, _ in rows])],
                          CSV_COLUMNS, [row for _, row in rows], figs)
    paths["figures"] = figs
    paths["summary"] = s
    return paths


def _figure(study: Study, s: dict, path: Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = (("val_loss", "validation loss (weighted BCE/CE)"), ("eval_loss", "evaluation loss (weighted BCE/CE)"),
              ("auroc", "evaluation AUROC (mean over labels)"))
    bases = list(dict.fromkeys(e["base"] for e in s["rows"]))
    for ax, (key, label) in zip(axes, panels):
        for i, b in enumerate(bases):
            pts = [e for e in s["rows"] if e["base"] == b and e["runs"]]
            x = [e["width"]["ratio"] if e.get("width") else e["multiplier"] for e in pts]
            mean = [finite_mean(e[key]) for e in pts]
            sd = [finite_sd(e[key]) or 0.0 for e in pts]
            colour = f"C{i % 10}"
            ax.errorbar(x, [np.nan if v is None else v for v in mean], yerr=sd, marker="o", ms=4, capsize=3,
                        color=colour, label=b)
            for xi, e in zip(x, pts):
                ax.plot(np.full(len(e[key]), xi), e[key], ".", color=colour, alpha=0.35, ms=4)
        ax.set_xlabel("parameters (multiples of P)")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.suptitle(f"Fig. 12: capacity ({study.dataset}, {study.image_size} px, budget {study.budget_label}, "
                 f"{study.folds} folds x {len(study.seeds)} seed(s); mean and sd over runs, dots single runs)",
                 fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


__all__ = ["DEFAULT_BASES", "DEFAULT_CAPACITIES", "class_weights", "eval_loss_from_model", "parse_capacities",
           "summarise_capacity", "weighted_loss_from_probs", "write_capacity"]
