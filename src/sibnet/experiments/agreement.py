"""Table 3: agreement of each trained model's saliency maps with expert masks (SSIM, Dice, HD95).

* Models: the finished table-1 jobs' evaluated checkpoint (``last.pt``; ``best.pt`` under early
  stopping), never retrained. Maps: one saliency method for
  every model (``--saliency``, default DeepTaylor, so the methods are compared on the same
  explanation), all classes, eval mode, for the first ``max_maps`` images of the evaluation split
  (:func:`sibnet.evaluation.run.compute_maps`).
* Scores: :func:`sibnet.evaluation.agreement.saliency_agreement` (convex hull of the Otsu
  foreground; pairs where the class is present and its mask nonempty); per run the mean over
  classes; mean (sd) over runs; paired difference method − baseline of the Dice.
* Fig. 9: mean Dice per epoch, when the jobs kept ``epoch<E>.pt`` (``--keep-epochs``).
* Datasets whose images carry burned-in marks (BUSI): also the share of each labelled class's map on
  the marks (:func:`sibnet.evaluation.run.marks_summary`), column "on marks".
* Synthetic data with a shortcut glyph (``--data-option shortcut=<class>``): also the share of the
  shortcut class's map inside the glyph's box on the evaluated images that carry it
  (:func:`sibnet.evaluation.run.glyph_summary`), column "on glyph".
* Per job the result is cached per map method (``agreement-gradcam.json``,
  ``agreement-deep_taylor-contrast-clrp.json``, ...; reused when the method, its options and the image
  count match).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import SibnetError
from ..evaluation.agreement import saliency_agreement
from ..evaluation.run import compute_maps, dataset_glyph_summary, marks_summary
from ..evaluation.statistics import finite_mean, finite_sd, mean_sd
from ..saliency import describe
from .evaluate import eval_dataset, load_job_model, train_split
from .figures import curves, save_figure
from .methods import BASELINE, Method
from .store import collect, epoch_checkpoints, eval_cache, read_json, write_eval_cache
from .study import Job, Study, job_config
from .table1 import paired_vs_baseline
from .tables import PAIRED_NOTE, fmt_diff, models_line, study_header, write_outputs

SCORES = ("dice", "hd95", "ssim")
MARKS_NOTE = ("on marks: share of the labelled class's map (positive mass) on the bright thin burned-in marks of "
              "its image (sibnet.evaluation.marks; every image of the first max_maps, also those without a mask); "
              "a uniform map would have the marks' area, {area} of the image on average")
GLYPH_NOTE = ("on glyph: share of the {shortcut} map (positive mass) inside the shortcut glyph's box, mean over the "
              "evaluated images that carry the glyph ({n} per run on average; outside training the glyph is "
              "independent of the finding), whatever their labels; a uniform map would have the box's area, "
              "{area:.3f} of the image")


def checkpoint_agreement(model, meta: dict, dataset, method: str, max_maps: int, options: dict | None = None) -> dict:
    """Agreement of ``model``'s ``method`` maps with the masks of the first ``max_maps`` images of
    ``dataset``: the mean of each score over classes, the image count and the per-class means."""
    n = min(int(max_maps), len(dataset))
    maps = compute_maps(model, dataset, method, range(n), **(options or {}))
    if maps["masks"] is None:
        raise SibnetError(f"table3: dataset {meta.get('dataset')!r} has no expert masks")
    agr = saliency_agreement(maps["maps"], maps["masks"], maps["labels"], class_names=meta["class_names"])
    out = {k: agr["mean"][k] for k in SCORES} | {"n_images": n,
                                                 "per_class": {c: {k: v[k]["mean"] for k in SCORES}
                                                               for c, v in agr["per_class"].items()}}
    if has_marks(dataset):
        out["marks"] = marks_summary(maps["maps"], maps["images"], maps["labels"], meta["class_names"])
    on_glyph = dataset_glyph_summary(dataset, maps, meta["class_names"])
    if on_glyph is not None:
        out["glyph"] = on_glyph
    return out


def glyph_note(res: dict) -> str:
    """The header line that explains the "on glyph" column."""
    g = [r["last"]["glyph"] for r in res.values() if "glyph" in r["last"]]
    return GLYPH_NOTE.format(shortcut=g[0]["shortcut"], n=f"{finite_mean([x['n'] for x in g]):.0f}",
                             area=g[0]["area"])


def marks_note(res: dict) -> str:
    """The header line that explains the "on marks" column, with the marks' mean area over the jobs."""
    area = finite_mean([r["last"]["marks"]["area_mean"] for r in res.values() if "marks" in r["last"]])
    return MARKS_NOTE.format(area=f"{area:.3f}")


def has_marks(dataset) -> bool:
    """Whether the dataset's images carry burned-in marks (BUSI): table 3 then adds the maps' share on them."""
    return bool(getattr(dataset.info, "extra", {}).get("burned_in_marks"))


def job_agreement(study: Study, job: Job, method: str, max_maps: int, bn_stats: str = "stored",
                  options: dict | None = None) -> dict:
    """The job's agreement (its evaluated model and, with ``--keep-epochs``, the Dice of every kept epoch),
    from its cache when the cache's key matches."""
    folder = job.folder(study)
    # one file per map method (agreement-gradcam.json, agreement-deep_taylor-contrast-clrp.json, ...), so
    # tables of different map methods keep their caches side by side; files written under the older names
    # (agreement.json, agreement-contrast-clrp.json: one file for every method with the same options) are
    # still read when their key matches
    cache = eval_cache(folder, "agreement-" + describe(method, options, for_files=True), bn_stats)
    legacy = eval_cache(folder, describe("agreement", options, for_files=True), bn_stats)
    # "marks": written by code that adds the marks share where the dataset has marks (older caches lack it)
    # "glyph": written by code that adds the glyph share where the study's data has the shortcut glyph
    glyph = {"glyph": True} if study.data_options().get("shortcut") else {}
    key = {"saliency": method, "max_maps": int(max_maps), "budget": study.budget_label,
           "checkpoint": study.checkpoint, **({"options": options} if options else {}), "marks": True, **glyph}
    for path in (cache, legacy):
        old = read_json(path)
        if old is not None and old.get("key") == key:
            return old
    cfg = job_config(study, job)
    dataset, split = eval_dataset(study, cfg)
    if not getattr(dataset.info, "has_masks", False):
        raise SibnetError(f"table3: dataset {study.dataset!r} has no expert masks (use a synthetic dataset)")
    train = train_split(cfg) if bn_stats == "train" else None  # built once for every checkpoint

    def agreement(path=None):
        return checkpoint_agreement(*load_job_model(study, job, cfg, path, bn_stats, train), dataset, method,
                                    max_maps, options)

    result = {"key": key, "split": split, "last": agreement(), "epochs": {}}
    for epoch, path in epoch_checkpoints(folder):
        result["epochs"][str(epoch)] = agreement(path)["dice"]
    write_eval_cache(cache, result)
    return result


def write_table3(study: Study, methods: list[Method], jobs: list[Job], out: Path, command: str, method: str,
                 max_maps: int, bn_stats: str = "stored", options: dict | None = None,
                 reference: str = BASELINE) -> dict:
    """Write ``table3.md``, ``table3.csv`` and (with kept epochs) ``fig9_dice_per_epoch.png`` to ``out``
    from the finished jobs; returns their paths plus ``agreement``, the per-job results. Dice differences
    are paired against ``reference`` (default the baseline; e.g. ``warm-baseline``, the control of
    ``warm-sibnet``)."""
    done = collect(study, jobs)
    res = {job: job_agreement(study, job, method, max_maps, bn_stats, options) for job in done}
    method = describe(method, options)
    has_base = any(m.name == reference for m in methods)
    marks = any("marks" in r["last"] for r in res.values())
    glyph = any("glyph" in r["last"] for r in res.values())
    rows, csv_rows, per_epoch = [], [], {}
    for m in methods:
        mine = [j for j in res if j.method == m.name]
        row = [m.name, f"{len(mine)}/{sum(1 for j in jobs if j.method == m.name)}"]
        c = {"method": m.name, "runs": len(mine)}
        for k in SCORES:
            v = [np.nan if res[j]["last"][k] is None else res[j]["last"][k] for j in mine]
            row.append(mean_sd(v) if v else "n/a")
            c[k], c[f"{k}_sd"] = finite_mean(v), finite_sd(v)
        if marks:
            v = [np.nan if res[j]["last"]["marks"]["mean"] is None else res[j]["last"]["marks"]["mean"] for j in mine]
            row.append(mean_sd(v) if v else "n/a")
            c["marks_share"], c["marks_share_sd"] = finite_mean(v), finite_sd(v)
        if glyph:
            v = [np.nan if res[j]["last"]["glyph"]["mean"] is None else res[j]["last"]["glyph"]["mean"] for j in mine]
            row.append(mean_sd(v) if v else "n/a")
            c["glyph_share"], c["glyph_share_sd"] = finite_mean(v), finite_sd(v)
        if has_base and m.name != reference:
            d = paired_vs_baseline({j: {"v": r["last"]["dice"]} for j, r in res.items()}, m.name, "v", reference)
            row += list(fmt_diff(d))
            c["diff_dice"], c["diff_dice_lo"], c["diff_dice_hi"], c["p_dice"] = d["mean_diff"], *d["ci"], \
                d["p_wilcoxon"]
            if glyph:
                d = paired_vs_baseline({j: {"v": r["last"]["glyph"]["mean"]} for j, r in res.items()}, m.name, "v",
                                       reference)
                row.append(fmt_diff(d)[0])
                c["diff_glyph"], c["diff_glyph_lo"], c["diff_glyph_hi"] = d["mean_diff"], *d["ci"]
        elif has_base:
            row += ["(reference)", ""] + (["(reference)"] if glyph else [])
        rows.append(row)
        csv_rows.append(c)
        dice_curves = [([int(e) for e in res[j]["epochs"]], list(res[j]["epochs"].values())) for j in mine
                       if res[j]["epochs"]]
        if dice_curves:
            per_epoch[m.name] = dice_curves
    header = study_header(command, study, methods, [
        models_line(len(done), len(jobs), bn_stats, checkpoint=study.checkpoint),
        f"maps: {method} for every model, all classes, eval mode, first {max_maps} images of the evaluation split",
        "agreement: convex hull of the Otsu foreground of each map vs the expert mask, pairs with the class "
        "present and a nonempty mask; Dice, HD95 (pixels; empty maps left out of HD95), SSIM; per run the mean "
        "over classes, mean (sd) over runs", *([marks_note(res)] if marks else []),
        *([glyph_note(res)] if glyph else []), PAIRED_NOTE,
        *([f"paired differences against {reference} (--reference), not the baseline"]
          if has_base and reference != BASELINE else [])])
    cols = ["method", "runs", "Dice", "HD95 (px)", "SSIM"] + (["on marks"] if marks else []) \
        + (["on glyph"] if glyph else []) + ([f"ΔDice vs {reference} [95% CI]", "p"] if has_base else []) \
        + ([f"Δon glyph vs {reference} [95% CI]"] if has_base and glyph else [])
    figs = []
    if per_epoch:
        fig = curves(per_epoch, "epoch", f"mean Dice ({method} maps)", f"Fig. 9: Dice per epoch ({study.dataset})")
        figs.append(str(save_figure(fig, Path(out) / "fig9_dice_per_epoch.png")))
    csv_cols = ["method", "runs", "dice", "dice_sd", "hd95", "hd95_sd", "ssim", "ssim_sd"]
    csv_cols += ["marks_share", "marks_share_sd"] if marks else []
    csv_cols += ["glyph_share", "glyph_share_sd"] if glyph else []
    csv_cols += ["diff_dice", "diff_dice_lo", "diff_dice_hi", "p_dice"] if has_base else []
    csv_cols += ["diff_glyph", "diff_glyph_lo", "diff_glyph_hi"] if has_base and glyph else []
    paths = write_outputs(out, "table3", f"Table 3: saliency agreement with expert masks, {study.dataset}", header,
                          [("Agreement with expert masks", cols, rows)], csv_cols, csv_rows, figs)
    paths["figures"] = figs
    paths["agreement"] = res
    return paths


__all__ = ["checkpoint_agreement", "job_agreement", "write_table3"]
