"""Table 4: AUROC of the trained table-1 models under Gaussian noise on their evaluation images.

* The models are the finished jobs' evaluated checkpoints (``last.pt``; ``best.pt`` under early
  stopping), never retrained; a job not finished is missing.
* Noise: :func:`sibnet.evaluation.robustness.add_gaussian_noise` on the [0, 1] images (the
  datasets' intensities before normalisation; a dataset that normalises its images is refused),
  seeded ``1000 * fold + batch index`` so every method sees the same noisy images of a fold.
  sigma = 0 is the clean evaluation (equal to table 1's numbers).
* Per job the result is cached in ``noise.json`` (reused when its sigmas match).
* Table: mean AUROC mean (sd) over runs per method and sigma; paired difference method − baseline
  at every sigma (95% interval, Wilcoxon p); figure ``fig_noise.png``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..errors import SibnetError
from ..evaluation.classification import classification_metrics
from ..evaluation.robustness import add_gaussian_noise
from ..evaluation.run import metric_labels, probabilities
from ..evaluation.statistics import finite_mean, finite_sd, mean_sd
from .evaluate import eval_dataset, load_job_model
from .figures import lines, save_figure
from .methods import BASELINE, Method
from .store import collect, eval_cache, read_json, write_eval_cache
from .study import Job, Study, job_config
from .table1 import paired_vs_baseline
from .tables import PAIRED_NOTE, fmt_diff, models_line, study_header, write_outputs


def noisy_scores(model, dataset, sigmas, task: str, class_names, seed: int = 0, batch_size: int = 32) -> dict:
    """``{sigma: {"mean_auroc", "mean_auprc"}}`` of ``model`` on ``dataset`` with noise of each sigma."""
    if getattr(dataset, "normalize", None) not in (None, False):
        raise SibnetError("table4: the dataset normalises its images; noise is defined on [0, 1] images "
                          "(use the dataset without normalize)")
    model.eval()
    probs: dict[float, list] = {s: [] for s in sigmas}
    labels = []
    with torch.no_grad():
        for b, batch in enumerate(DataLoader(dataset, batch_size=batch_size, shuffle=False)):
            labels.append(batch["label"].float())
            for s in sigmas:
                x = add_gaussian_noise(batch["image"], float(s), seed=seed + b) if s > 0 else batch["image"]
                probs[s].append(probabilities(model(x), task))
    y, _ = metric_labels(torch.cat(labels).numpy())
    out = {}
    for s in sigmas:
        m = classification_metrics(torch.cat(probs[s]).numpy(), y, class_names=class_names, n_boot=0)
        out[str(float(s))] = {"mean_auroc": m["mean"]["auroc"], "mean_auprc": m["mean"]["auprc"]}
    return out


def job_noise(study: Study, job: Job, sigmas, bn_stats: str = "stored") -> dict:
    """:func:`noisy_scores` of the job's evaluated model on its evaluation split, from its cache when
    the cache's sigmas and budget match."""
    folder = job.folder(study)
    cache = eval_cache(folder, "noise", bn_stats)
    key = [float(s) for s in sigmas]
    old = read_json(cache)
    if old is not None and old.get("sigmas") == key and old.get("budget") == study.budget_label:
        return old["results"]
    cfg = job_config(study, job)
    dataset, split = eval_dataset(study, cfg)
    model, meta = load_job_model(study, job, cfg, bn_stats=bn_stats)
    results = noisy_scores(model, dataset, key, meta["task"], meta["class_names"], seed=1000 * job.fold)
    write_eval_cache(cache, {"sigmas": key, "budget": study.budget_label, "split": split, "results": results})
    return results


def write_table4(study: Study, methods: list[Method], jobs: list[Job], out: Path, command: str, sigmas,
                 log=print, bn_stats: str = "stored") -> dict:
    """Write ``table4.md``, ``table4.csv`` and ``fig_noise.png`` to ``out`` from the finished jobs (``log``
    is not used); returns their paths plus ``noise``, the per-job results."""
    done = collect(study, jobs)
    noise = {}
    for job in done:
        noise[job] = job_noise(study, job, sigmas, bn_stats)
    keys = [str(float(s)) for s in sigmas]
    has_base = any(m.name == BASELINE for m in methods)
    rows, csv_rows, diff_rows, series = [], [], [], {}
    for m in methods:
        mine = {j: r for j, r in noise.items() if j.method == m.name}
        row = [m.name, f"{len(mine)}/{sum(1 for j in jobs if j.method == m.name)}"]
        c = {"method": m.name, "runs": len(mine)}
        means, sds = [], []
        for k in keys:
            v = [np.nan if r[k]["mean_auroc"] is None else r[k]["mean_auroc"] for r in mine.values()]
            row.append(mean_sd(v) if v else "n/a")
            c[f"auroc_sigma_{k}"], c[f"auroc_sd_sigma_{k}"] = finite_mean(v), finite_sd(v)
            means.append(finite_mean(v) if v else np.nan)
            sds.append(finite_sd(v) or 0.0)
        if mine:
            series[m.name] = ([float(k) for k in keys], [np.nan if x is None else x for x in means], sds)
        if has_base and m.name != BASELINE:
            drow = [m.name]
            for k in keys:
                recs = {j: {"v": r[k]["mean_auroc"]} for j, r in noise.items()}
                d = paired_vs_baseline(recs, m.name, "v")
                drow.append(" p=".join(fmt_diff(d)))
                c[f"diff_auroc_sigma_{k}"], c[f"p_sigma_{k}"] = d["mean_diff"], d["p_wilcoxon"]
            diff_rows.append(drow)
        rows.append(row)
        csv_rows.append(c)
    header = study_header(command, study, methods, [
        models_line(len(done), len(jobs), bn_stats, checkpoint=study.checkpoint),
        f"noise: clip(x + N(0, sigma^2), 0, 1) on the [0, 1] evaluation images, sigma in {list(map(float, sigmas))}; "
        "seed 1000*fold + batch index (the same noisy images for every method of a fold)",
        "AUROC: per run, mean over labels; mean (sd) over runs", PAIRED_NOTE])
    sections = [("Mean AUROC under Gaussian noise", ["method", "runs"] + [f"σ={k}" for k in keys], rows)]
    if diff_rows:
        sections.append(("Difference vs baseline (paired over runs): ΔAUROC [95% CI] p",
                         ["method"] + [f"σ={k}" for k in keys], diff_rows))
    figs = []
    if series:
        fig = lines(series, "noise sigma", "mean AUROC", f"AUROC under Gaussian noise ({study.dataset}, "
                    f"{study.image_size} px, budget {study.budget_label})", logx=True)
        figs.append(str(save_figure(fig, Path(out) / "fig_noise.png")))
    cols = ["method", "runs"] + [f"{p}sigma_{k}" for k in keys for p in ("auroc_", "auroc_sd_")]
    cols += [f"{p}sigma_{k}" for k in keys for p in ("diff_auroc_", "p_")] if has_base else []
    paths = write_outputs(out, "table4", f"Table 4: robustness to Gaussian noise on {study.dataset}", header,
                          sections, cols, csv_rows, figs)
    paths["figures"] = figs
    paths["noise"] = noise
    return paths


__all__ = ["job_noise", "noisy_scores", "write_table4"]
