"""Table 5: linear SVM, RBF SVM and random forest on the frozen learned features of table-1 models.

* Features: the input of the model's last ``nn.Linear`` (for DenseNet-121: the globally pooled
  1024 features of the penultimate layer), in eval mode, of the job's evaluated checkpoint
  (``last.pt``; ``best.pt`` under early stopping), never retrained. Probes
  (:func:`sibnet.evaluation.probes.evaluate_probes`, seeded with the job's seed) are fitted on the
  fold's training split and scored on the job's evaluation split.
* Per job the result is cached in ``probes.json`` (reused when the probe list, the budget and the
  probes' version match).
* Table: mean AUROC, mean (sd) over runs per method and probe, and the network's own head
  (table 1's AUROC) for comparison; paired difference method − baseline per probe.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from ..errors import SibnetError
from ..evaluation.probes import PROBE_VERSION, evaluate_probes
from ..evaluation.statistics import finite_mean, finite_sd, mean_sd
from .evaluate import eval_dataset, load_job_model, train_split
from .methods import BASELINE, Method
from .store import collect, eval_cache, read_json, write_eval_cache
from .study import Job, Study, job_config
from .table1 import paired_vs_baseline
from .tables import PAIRED_NOTE, fmt_diff, models_line, study_header, write_outputs


def penultimate_features(model: nn.Module, dataset, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, D), labels (N, K)): the input of the last Linear layer, in eval mode."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise SibnetError("table5: the model has no Linear layer whose input could serve as features")
    grabbed = []
    hook = linears[-1].register_forward_hook(lambda mod, inp, out: grabbed.append(inp[0].detach().float().cpu()))
    was = model.training
    model.eval()
    labels = []
    try:
        with torch.no_grad():
            for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
                model(batch["image"])
                labels.append(batch["label"].float())
    finally:
        hook.remove()
        model.train(was)
    feats = torch.cat(grabbed).flatten(1).numpy()
    y = torch.cat(labels).numpy()
    y = np.where(y == -1, np.nan, y)
    return feats, y


def job_probes(study: Study, job: Job, probes, bn_stats: str = "stored") -> dict:
    """The probes' scores on the job's evaluated model's features, from its cache when the cache's
    probes, budget and probe version match."""
    folder = job.folder(study)
    cache = eval_cache(folder, "probes", bn_stats)
    old = read_json(cache)
    if old is not None and old.get("probes") == list(probes) and old.get("budget") == study.budget_label \
            and old.get("version") == PROBE_VERSION:
        return old["results"]
    cfg = job_config(study, job)
    model, meta = load_job_model(study, job, cfg, bn_stats=bn_stats)
    xtr, ytr = penultimate_features(model, train_split(cfg))
    test, split = eval_dataset(study, cfg)
    xte, yte = penultimate_features(model, test)
    results = evaluate_probes(xtr, ytr, xte, yte, class_names=meta["class_names"], probes=probes, seed=job.seed)
    write_eval_cache(cache, {"probes": list(probes), "version": PROBE_VERSION, "budget": study.budget_label,
                             "split": split, "results": results})
    return results


def write_table5(study: Study, methods: list[Method], jobs: list[Job], out: Path, command: str, probes,
                 bn_stats: str = "stored") -> dict:
    """Write ``table5.md`` and ``table5.csv`` to ``out`` from the finished jobs; returns their paths plus
    ``probes``, the per-job results."""
    done = collect(study, jobs)
    res = {job: job_probes(study, job, probes, bn_stats) for job in done}
    has_base = any(m.name == BASELINE for m in methods)
    cols_probe = list(probes) + ["network head"]
    rows, csv_rows, diff_rows = [], [], []
    for m in methods:
        mine = [j for j in res if j.method == m.name]
        row = [m.name, f"{len(mine)}/{sum(1 for j in jobs if j.method == m.name)}"]
        c = {"method": m.name, "runs": len(mine)}
        for p in cols_probe:
            if p == "network head":
                v = [np.nan if done[j]["mean_auroc"] is None else done[j]["mean_auroc"] for j in mine]
                key = "head"
            else:
                v = [np.nan if res[j][p]["mean_auroc"] is None else res[j][p]["mean_auroc"] for j in mine]
                key = p
            row.append(mean_sd(v) if v else "n/a")
            c[f"auroc_{key}"], c[f"auroc_sd_{key}"] = finite_mean(v), finite_sd(v)
        rows.append(row)
        if has_base and m.name != BASELINE:
            drow = [m.name]
            for p in probes:
                recs = {j: {"v": res[j][p]["mean_auroc"]} for j in res}
                d = paired_vs_baseline(recs, m.name, "v")
                drow.append(" p=".join(fmt_diff(d)))
                c[f"diff_{p}"], c[f"p_{p}"] = d["mean_diff"], d["p_wilcoxon"]
            diff_rows.append(drow)
        csv_rows.append(c)
    header = study_header(command, study, methods, [
        models_line(len(done), len(jobs), bn_stats, "frozen", checkpoint=study.checkpoint),
        "features: input of the last Linear layer (globally pooled penultimate features), eval mode",
        "probes: StandardScaler + LinearSVC(C=1, primal solver) / SVC(rbf, C=1, gamma='scale') / "
        "RandomForest(200 trees), one per label, fitted on the fold's training split, scored on the evaluation "
        "split; AUROC mean over labels",
        "'network head': the model's own classifier on the same split (table 1)", PAIRED_NOTE])
    sections = [("Mean AUROC of probes on frozen features", ["method", "runs"] + cols_probe, rows)]
    if diff_rows:
        sections.append(("Difference vs baseline (paired over runs): ΔAUROC [95% CI] p", ["method"] + list(probes),
                         diff_rows))
    cols = ["method", "runs"] + [f"{p}{k}" for k in [*probes, "head"] for p in ("auroc_", "auroc_sd_")]
    cols += [f"{p}{k}" for k in probes for p in ("diff_", "p_")] if has_base else []
    paths = write_outputs(out, "table5", f"Table 5: probes on frozen features, {study.dataset}", header, sections,
                          cols, csv_rows)
    paths["probes"] = res
    return paths


__all__ = ["job_probes", "penultimate_features", "write_table5"]
