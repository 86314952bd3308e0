"""Table 1: AUROC and AUPRC per method over folds x seeds, paired differences against the baseline.

From the finished jobs of a study (:func:`sibnet.experiments.store.collect`):

* per method: number of finished runs, mean (sd) of the per-run mean AUROC and mean AUPRC over the
  labels (each run's means are over the labels defined on its evaluation split), and mean (sd) of
  each label's AUROC;
* per method other than the baseline: the paired difference method − baseline over the runs
  (same fold and seed) finished for both, with its 95% t-interval and Wilcoxon p
  (:func:`sibnet.evaluation.statistics.paired_difference`);
* figures: ``fig3_auroc_box.png`` (per-run mean AUROC per method), ``fig5_per_label_auroc.png``
  (per-label AUROC, mean and sd over runs), ``fig4_curves.png`` (validation loss and validation
  AUROC per epoch: mean over runs, thin lines single runs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..evaluation.statistics import finite_mean, finite_sd, mean_sd, paired_difference
from .figures import box_plot, per_label_bars, save_figure, two_panel_curves
from .methods import BASELINE, METHODS, Method
from .store import collect, read_metrics, read_val_loss
from .study import Job, Study
from .tables import PAIRED_NOTE, fmt_diff, study_header, write_outputs

METRICS = (("mean_auroc", "AUROC"), ("mean_auprc", "AUPRC"))


def _value(v):
    return np.nan if v is None else float(v)


def paired_vs_baseline(records: dict[Job, dict], method: str, key: str, baseline: str = BASELINE) -> dict:
    """paired_difference(method, baseline) of ``key`` over the (fold, seed) runs both finished."""
    base = {(j.fold, j.seed): r for j, r in records.items() if j.method == baseline}
    mine = {(j.fold, j.seed): r for j, r in records.items() if j.method == method}
    runs = sorted(set(base) & set(mine))
    a = [_value(mine[r][key]) for r in runs]
    b = [_value(base[r][key]) for r in runs]
    out = paired_difference(a, b)
    out["runs"] = [list(r) for r in runs]
    return out


def summarise(study: Study, methods: list[Method], jobs: list[Job], reference: str = BASELINE) -> dict:
    """Per-method summaries and paired differences against ``reference`` from the finished jobs (no files
    written)."""
    records = collect(study, jobs)
    labels: list[str] = []
    for r in records.values():
        labels = labels or list(r["class_names"])
    out = {"records": records, "labels": labels, "methods": {}}
    for m in methods:
        rs = [r for j, r in sorted(records.items(), key=lambda t: (t[0].seed, t[0].fold)) if j.method == m.name]
        total = sum(1 for j in jobs if j.method == m.name)
        entry = {"n": len(rs), "total": total,
                 "mean_auroc": [_value(r["mean_auroc"]) for r in rs],
                 "mean_auprc": [_value(r["mean_auprc"]) for r in rs],
                 "per_label": {lab: [_value(r["per_label"][lab]["auroc"]) for r in rs] for lab in labels},
                 "per_label_auprc": {lab: [_value(r["per_label"][lab]["auprc"]) for r in rs] for lab in labels}}
        if m.name != reference:
            entry["diff"] = {key: paired_vs_baseline(records, m.name, key, reference) for key, _ in METRICS}
        out["methods"][m.name] = entry
    return out


def _header_notes(s: dict, n_done: int, n_jobs: int, has_base: bool, reference: str = BASELINE) -> list[str]:
    """The table's own header lines (after :func:`study_header`'s)."""
    extra = [f"finished jobs: {n_done} of {n_jobs}"
             + ("" if n_done == n_jobs else " (the table covers the finished ones; rerun the command to continue)"),
             "AUROC/AUPRC: per run, the mean over the labels of the evaluation split; shown as mean (sd) over runs",
             PAIRED_NOTE]
    evals = sorted({r["eval_split"] for r in s["records"].values()})
    if evals:
        n_eval = sorted({r["n_eval"] for r in s["records"].values()})
        extra.append(f"evaluation split: {', '.join(evals)} ({', '.join(map(str, n_eval))} images per run)")
    if not has_base:
        extra.append("the baseline is not among the methods: no paired differences" if reference == BASELINE
                     else f"the reference method {reference} is not among the methods: no paired differences")
    elif reference != BASELINE:
        extra.append(f"paired differences against {reference} (--reference), not the baseline")
    return extra


def _method_rows(m: Method, e: dict, labels: list[str], has_base: bool, reference: str = BASELINE) -> tuple[list, dict]:
    """(Markdown row, CSV row) of one method's summary ``e``."""
    row = [m.name, f"{e['n']}/{e['total']}", mean_sd(e["mean_auroc"]) if e["n"] else "n/a",
           mean_sd(e["mean_auprc"]) if e["n"] else "n/a"]
    c = {"method": m.name, "description": m.description, "runs": e["n"], "jobs": e["total"],
         "auroc_mean": finite_mean(e["mean_auroc"]), "auroc_sd": finite_sd(e["mean_auroc"]),
         "auprc_mean": finite_mean(e["mean_auprc"]), "auprc_sd": finite_sd(e["mean_auprc"])}
    if has_base:
        if m.name == reference:
            row += ["(reference)", "", "(reference)", ""]
        else:
            for key, short in METRICS:
                d = e["diff"][key]
                row += list(fmt_diff(d))
                c.update({f"diff_{short.lower()}": d["mean_diff"], f"diff_{short.lower()}_lo": d["ci"][0],
                          f"diff_{short.lower()}_hi": d["ci"][1], f"p_{short.lower()}": d["p_wilcoxon"],
                          f"pairs_{short.lower()}": d["n"]})
    for lab in labels:
        c[f"auroc_{lab}"] = finite_mean(e["per_label"][lab])
        c[f"auroc_sd_{lab}"] = finite_sd(e["per_label"][lab])
        c[f"auprc_{lab}"] = finite_mean(e["per_label_auprc"][lab])
    return row, c


def _csv_columns(labels: list[str], has_base: bool) -> list[str]:
    cols = ["method", "description", "runs", "jobs", "auroc_mean", "auroc_sd", "auprc_mean", "auprc_sd"]
    if has_base:
        for short in ("auroc", "auprc"):
            cols += [f"diff_{short}", f"diff_{short}_lo", f"diff_{short}_hi", f"p_{short}", f"pairs_{short}"]
    for lab in labels:
        cols += [f"auroc_{lab}", f"auroc_sd_{lab}", f"auprc_{lab}"]
    return cols


def write_table1(study: Study, methods: list[Method], jobs: list[Job], out: Path, command: str,
                 figures: bool = True, reference: str = BASELINE) -> dict:
    """Write ``table1.md``, ``table1.csv`` and (with ``figures`` and a finished job) Fig. 3-5 to ``out``;
    returns their paths plus ``summary`` (:func:`summarise`). Differences are paired against the method
    ``reference`` (default the baseline; e.g. ``warm-baseline`` as the control of ``warm-sibnet``)."""
    s = summarise(study, methods, jobs, reference)
    labels = s["labels"]
    has_base = any(m.name == reference for m in methods)
    n_done = sum(e["n"] for e in s["methods"].values())
    header = study_header(command, study, methods, _header_notes(s, n_done, len(jobs), has_base, reference))
    main_cols = ["method", "runs", "AUROC", "AUPRC"] + (
        [f"ΔAUROC vs {reference} [95% CI]", "p", f"ΔAUPRC vs {reference} [95% CI]", "p"] if has_base else [])
    rows = [_method_rows(m, s["methods"][m.name], labels, has_base, reference) for m in methods]
    label_rows = [[m.name] + [mean_sd(s["methods"][m.name]["per_label"][lab]) if s["methods"][m.name]["n"] else "n/a"
                              for lab in labels] for m in methods]
    figs = _figures(study, methods, s, out) if figures and n_done else []
    sections = [("AUROC and AUPRC", main_cols, [r for r, _ in rows])]
    if labels:
        sections.append(("AUROC per label, mean (sd) over runs", ["method"] + labels, label_rows))
    paths = write_outputs(out, "table1", f"Table 1: classification on {study.dataset}", header, sections,
                          _csv_columns(labels, has_base), [c for _, c in rows], figs)
    paths["figures"] = figs
    paths["summary"] = s
    return paths


def _figures(study: Study, methods: list[Method], s: dict, out: Path) -> list[str]:
    done = [m for m in methods if s["methods"][m.name]["n"]]
    title = f"{study.dataset}, {study.image_size} px, budget {study.budget_label}"
    paths = []
    fig = box_plot({m.name: s["methods"][m.name]["mean_auroc"] for m in done}, "mean AUROC over labels",
                   f"Fig. 3: per-run mean AUROC ({title})")
    paths.append(str(save_figure(fig, Path(out) / "fig3_auroc_box.png")))
    fig = per_label_bars({m.name: s["methods"][m.name]["per_label"] for m in done}, s["labels"], "AUROC",
                         f"Fig. 5: AUROC per label, mean and sd over runs ({title})")
    paths.append(str(save_figure(fig, Path(out) / "fig5_per_label_auroc.png")))
    loss, auroc = {}, {}
    for m in done:
        loss[m.name], auroc[m.name] = [], []
        for job in s["records"]:
            if job.method != m.name:
                continue
            folder = job.folder(study)
            vl = read_val_loss(folder)
            loss[m.name].append(([r["epoch"] for r in vl], [r["val_loss"] for r in vl]))
            hist = read_metrics(folder)
            auroc[m.name].append((hist.get("epoch", []), hist.get("val_auroc", [])))
    fig = two_panel_curves(loss, auroc, "epoch", ("validation loss (weighted BCE/CE)", "validation AUROC"),
                           f"Fig. 4: validation curves ({title})")
    paths.append(str(save_figure(fig, Path(out) / "fig4_curves.png")))
    return paths


__all__ = ["METHODS", "paired_vs_baseline", "summarise", "write_table1"]
