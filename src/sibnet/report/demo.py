"""The one-command demo: baseline vs SIBNet DenseNet-121 on synthetic chest radiographs, one HTML report.

Both runs use the same data (synthetic splits of the sizes in :class:`DemoPlan`, drawn from the
same seed), the same seed (so the same initial weights and batch order) and the same settings;
they differ only in the loss: weighted BCE alone (baseline) or weighted BCE + lambda_cd L_CD +
lambda_sc L_SC with the plan's saliency method (SIBNet, the method's default lambdas). Each run's
``best.pt`` (best validation mean AUROC) is evaluated on the test split: AUROC/AUPRC with bootstrap
95% intervals, and the agreement of both models' maps (same method for both) with the expert
masks. The numbers are whatever the runs give; nothing is tuned for either model.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..config import load_config
from ..data.registry import build_dataset
from ..evaluation.run import agreement_rows, evaluate
from ..loss_options import LossOptions
from ..losses.balance import DESCRIPTIONS as BALANCE_TEXT
from ..training import Trainer
from ..training.checkpoint import load_model_from_checkpoint
from .figures import case_figure, read_metrics_csv, training_curves
from .html import Figure, Section, Table, figure_png, write_report


@dataclass(frozen=True)
class DemoPlan:
    image_size: int = 64
    n_train: int = 160
    n_val: int = 64
    n_test: int = 96
    batch_size: int = 16
    epochs: int = 3
    method: str = LossOptions().saliency or "gradcam"  # the loss's default maps (configs/default.yaml)
    n_boot: int = 1000
    cases: int = 4
    seed: int = 0
    difficulty: float = 0.5


QUICK = DemoPlan(image_size=32, n_train=8, n_val=8, n_test=8, batch_size=8, epochs=1, n_boot=100, cases=2)


def _datasets(plan: DemoPlan):
    def make(split, n):
        return build_dataset("synthetic", split=split, image_size=plan.image_size, seed=plan.seed, n=n,
                             difficulty=plan.difficulty)

    return make("train", plan.n_train), make("val", plan.n_val), make("test", plan.n_test)


def _config(plan: DemoPlan, saliency: str | None, out: Path, progress: bool):
    settings = {"model.name": "densenet121", "loss.saliency": saliency, "data.name": "synthetic",
                "data.image_size": plan.image_size, "data.batch_size": plan.batch_size,
                "data.options": {"difficulty": plan.difficulty},
                "train.epochs": plan.epochs, "train.seed": plan.seed, "train.patience": None,
                "train.device": "cpu", "train.progress": progress, "out": str(out)}
    return load_config(None, (), settings)


def train_one(plan: DemoPlan, saliency: str | None, out: Path, datasets, progress: bool = True) -> dict:
    """Train one model through :class:`sibnet.training.Trainer`; returns its summary and timing."""
    cfg = _config(plan, saliency, out, progress)
    trainer = Trainer(cfg, datasets=(datasets[0], datasets[1], None))
    t0 = time.perf_counter()
    summary = trainer.fit(overwrite=True)
    summary["seconds"] = time.perf_counter() - t0
    loss = trainer.run.loss_fn
    summary["lambda_cd"] = None if saliency is None else float(loss.lambda_cd)
    summary["lambda_sc"] = None if saliency is None else float(loss.lambda_sc)
    summary["balance"] = None if saliency is None else loss.balance.mode
    summary["saliency_options"] = {} if saliency is None else dict(loss.saliency_options)
    return summary


def pick_cases(dataset, n: int) -> list[int]:
    """Up to ``n`` test images with a finding that has a mask; new classes are covered first."""
    labels = np.asarray(dataset.labels)
    candidates = [i for i in range(len(dataset)) if (labels[i] == 1).any()]
    chosen, seen = [], set()
    for i in candidates:  # first pass: an image that shows a class not yet shown
        present = set(np.flatnonzero(labels[i] == 1).tolist())
        if len(chosen) < n and present - seen:
            chosen.append(i)
            seen |= present
    for i in candidates:
        if len(chosen) >= n:
            break
        if i not in chosen:
            chosen.append(i)
    return sorted(chosen[:n])


def _ci(value, ci) -> str:
    if value is None:
        return "–"
    lo, hi = ci
    return f"{value:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else f"{value:.3f}"


def classification_section(results: dict, names, n_boot: int) -> Section:
    rows = []
    models = list(results)
    first = results[models[0]]["classification"]
    for name in list(names) + ["mean"]:
        row = [name]
        for metric in ("auroc", "auprc"):
            for m in models:
                c = results[m]["classification"]
                r = c["mean"] if name == "mean" else c["per_label"][name]
                row.append(_ci(r[metric], r[f"{metric}_ci"]))
        row.append(first["per_label"][name]["n_pos"] if name != "mean" else "")
        rows.append(row)
    cols = ["label"] + [f"AUROC {m}" for m in models] + [f"AUPRC {m}" for m in models] + ["positives"]
    return Section("Classification on the test split", [
        f"AUROC and AUPRC (average precision) of each model's best checkpoint on {first['n_images']} test "
        f"images; in brackets the bootstrap 95% percentile interval ({n_boot} resamples of the images).",
        Table(cols, rows, caption="Per label and mean over labels; point estimates from scikit-learn.")])


def agreement_section(results: dict, method: str) -> Section:
    models = list(results)
    agreements = {m: results[m]["agreement"] for m in models}
    if any(a is None for a in agreements.values()):
        return Section("Saliency agreement with the expert masks", ["No expert masks: no agreement computed."])
    names = list(agreements[models[0]]["per_class"])
    rows = []
    for name in names + ["mean"]:
        row = [name]
        for metric in ("dice", "hd95", "ssim"):
            for m in models:
                a = agreements[m]
                if name == "mean":
                    row.append(a["mean"][metric])
                else:
                    s = a["per_class"][name][metric]
                    row.append(f"{s['mean']:.3f} ± {s['sd']:.3f}" if s["mean"] is not None and s["sd"] is not None
                               else s["mean"])
        pairs = (agreements[models[0]]["per_class"][name]["n_pairs"] if name != "mean"
                 else sum(c["n_pairs"] for c in agreements[models[0]]["per_class"].values()))
        empty = [agreements[m]["per_class"][name]["n_empty_maps"] if name != "mean" else
                 sum(c["n_empty_maps"] for c in agreements[m]["per_class"].values()) for m in models]
        rows.append(row + [pairs, " / ".join(str(e) for e in empty)])
    cols = (["class"] + [f"Dice {m}" for m in models] + [f"HD95 px {m}" for m in models]
            + [f"SSIM {m}" for m in models] + ["pairs", "empty maps (" + " / ".join(models) + ")"])
    return Section("Saliency agreement with the expert masks", [
        f"Each model's {method} map of every (test image, class) pair whose label is 1 and whose expert mask "
        "is nonempty is binarised by the convex hull of its pixels above its Otsu threshold, then compared "
        "with the mask: Dice and SSIM (higher is better), HD95 in pixels (lower is better; a map with no "
        "pixel above the threshold scores Dice 0 and is left out of HD95). Per class: mean ± sd over the "
        "pairs; mean row: unweighted mean of the class means.",
        Table(cols, rows, caption="Same maps method for both models.")])


def run_demo(out: str | Path = "runs/demo", plan: DemoPlan = DemoPlan(), progress: bool = True,
             log=print) -> dict:
    """Train both models, evaluate them and write ``out/report.html``; returns the results summary."""
    out = Path(out)
    start = time.perf_counter()
    torch_threads = torch.get_num_threads()
    log(f"sibnet demo: synthetic chest radiographs {plan.image_size}x{plan.image_size}, "
        f"{plan.n_train}/{plan.n_val}/{plan.n_test} train/val/test images, {plan.epochs} epoch(s) each, "
        f"SIBNet saliency: {plan.method}")
    datasets = _datasets(plan)
    runs = {"baseline": None, "SIBNet": plan.method}
    summaries = _train_both(plan, runs, datasets, out, progress, log)
    test = datasets[2]
    names = list(test.info.class_names)
    options = summaries["SIBNet"]["saliency_options"]  # the maps SIBNet trained on, for both models
    results = _evaluate_both(plan, runs, test, names, options, out, log)
    cases = pick_cases(test, plan.cases)
    fig_dir = out / "figures"
    curves_png = figure_png(training_curves({n: out / n.lower() / "metrics.csv" for n in runs}))
    fig_dir.mkdir(parents=True, exist_ok=True)
    (fig_dir / "training_curves.png").write_bytes(curves_png)
    case_blocks = _case_figures(plan, runs, test, names, results, cases, fig_dir)
    total = time.perf_counter() - start
    lam = summaries["SIBNet"]
    sections = [_setup_section(plan, summaries, options, torch_threads, total),
                classification_section(results, names, plan.n_boot), agreement_section(results, plan.method),
                loss_terms_section(out / "sibnet" / "metrics.csv", lam, results), _curves_section(curves_png),
                _cases_section(cases, case_blocks), _files_section(out, fig_dir)]
    report = write_report(out / "report.html", sections, title="sibnet demo: baseline vs SIBNet DenseNet-121")
    summary = {
        "plan": asdict(plan), "seconds": total, "torch_threads": torch_threads, "report": str(report),
        "training": summaries, "cases": cases,
        "classification": {n: results[n]["classification"] for n in runs},
        "agreement": {n: agreement_rows(results[n]["agreement"]) if results[n]["agreement"] else None for n in runs},
    }
    (out / "results.json").write_text(json.dumps(_finite(summary), indent=2))
    return summary


def _train_both(plan: DemoPlan, runs: dict, datasets, out: Path, progress: bool, log) -> dict:
    """Train the baseline and SIBNet runs one after the other; their training summaries by name."""
    summaries = {}
    for name, saliency in runs.items():
        log(f"training {name} "
            f"({'weighted BCE only' if saliency is None else 'weighted BCE + L_CD + L_SC, ' + saliency})")
        summaries[name] = train_one(plan, saliency, out / name.lower(), datasets, progress)
        log(f"  {name}: {summaries[name]['seconds']:.0f} s, best validation AUROC "
            f"{summaries[name]['best_val_auroc']:.3f} (epoch {summaries[name]['best_epoch']})")
    return summaries


def _evaluate_both(plan: DemoPlan, runs: dict, test, names: list, options: dict, out: Path, log) -> dict:
    """Each run's best.pt evaluated on the test split with the maps SIBNet trained on (``options``)."""
    results = {}
    for name in runs:
        log(f"evaluating {name} on the test split")
        model, meta = load_model_from_checkpoint(out / name.lower() / "best.pt")
        results[name] = evaluate(model, test, task=meta["task"], class_names=names, method=plan.method,
                                 n_boot=plan.n_boot, seed=plan.seed, batch_size=32, saliency_options=options)
    return results


def _case_figures(plan: DemoPlan, runs: dict, test, names: list, results: dict, cases: list,
                  fig_dir: Path) -> list:
    """One figure per test case (both models' maps), written to ``fig_dir``; the report's figure blocks."""
    blocks = []
    for i in cases:
        item = test[i]
        per_model = {name: (results[name]["maps"]["maps"][i], results[name]["predictions"].probs[i])
                     for name in runs}
        fig = case_figure(item["image"].numpy(), item["mask"].numpy(), item["label"].numpy(), per_model, names,
                          title=f"test image {item['id']}")
        png = figure_png(fig)
        (fig_dir / f"case_{i:03d}.png").write_bytes(png)
        blocks.append(Figure(png, caption=f"{item['id']}: top row baseline, bottom row SIBNet; {plan.method} "
                                          "maps (positive part, one colour scale per case); lime: expert "
                                          "mask contours (in a class panel only when the class is present)."))
    return blocks


def _setup_section(plan: DemoPlan, summaries: dict, options: dict, torch_threads: int, total: float) -> Section:
    """The report's "What was run": data, models, loss, machine and times."""
    lam = summaries["SIBNet"]
    return Section("What was run", [
        f"Data: synthetic chest radiographs (sibnet's built-in generator, five CheXpert findings with pixel "
        f"masks, difficulty {plan.difficulty}, seed {plan.seed}): {plan.n_train} training, {plan.n_val} "
        f"validation and {plan.n_test} test images of {plan.image_size}x{plan.image_size} pixels.",
        f"Models: DenseNet-121 (MONAI, 1 input channel, 5 outputs), trained from scratch with the same seed "
        f"(same initial weights and batch order) for {plan.epochs} epoch(s) each, batch size {plan.batch_size}, "
        f"Adam lr 1e-3, betas (0.93, 0.999), positive-class weights from the training labels. Baseline: "
        f"weighted BCE only. SIBNet: weighted BCE + {lam['lambda_cd']} L_CD + {lam['lambda_sc']} L_SC with "
        f"{_method_text(plan.method, options)} saliency maps (the method's default weights; loss balance "
        f"{lam['balance']}: {BALANCE_TEXT.get(lam['balance'], lam['balance'])}, then weighted). "
        "The checkpoint evaluated is each run's "
        f"best.pt (best validation mean AUROC: baseline epoch {summaries['baseline']['best_epoch']}, SIBNet "
        f"epoch {summaries['SIBNet']['best_epoch']}).",
        f"Run on {platform.machine()} CPU with {torch_threads} torch threads: baseline training "
        f"{summaries['baseline']['seconds']:.0f} s, SIBNet training {summaries['SIBNet']['seconds']:.0f} s, "
        f"whole demo {total:.0f} s.",
        f"These are the numbers the runs gave, not tuned for either model. {plan.epochs} epoch(s) on "
        f"{plan.n_train} images of {plan.image_size} px is a demonstration of the pipeline, not a replication of "
        "the paper (320 px, thousands of images, many epochs): intervals are wide and the ranking of the two "
        "models can change with the seed, the data size and the number of epochs."])


def _curves_section(curves_png: bytes) -> Section:
    """The report's "Training curves"."""
    return Section("Training curves", [
        Figure(curves_png, caption="Per epoch, from each run's metrics.csv: mean training loss (total and its "
                                   "weighted BCE part) and validation mean AUROC."),
        "The SIBNet total includes the saliency terms, so its total is not comparable with the baseline's; "
        "the weighted BCE part is."])


def _cases_section(cases: list, case_blocks: list) -> Section:
    """The report's "Saliency on test cases"."""
    return Section("Saliency on test cases", [
        f"{len(cases)} test images with at least one finding; columns: the image with all expert mask contours, "
        "then one panel per class titled with the model's predicted probability and whether the finding is "
        "present."] + case_blocks)


def _files_section(out: Path, fig_dir: Path) -> Section:
    """The report's "Files and commands"."""
    return Section("Files and commands", [[
        f"runs: {out / 'baseline'}, {out / 'sibnet'} (best.pt, last.pt, metrics.csv, tensorboard/)",
        f"numbers: {out / 'results.json'}; figures: {fig_dir}",
        f"evaluate a run again: sibnet evaluate --checkpoint {out / 'sibnet' / 'best.pt'} (on the full synthetic "
        "test split unless given otherwise)",
        f"explain an image: sibnet explain --checkpoint {out / 'sibnet' / 'best.pt'} IMAGE.png"]])


def _method_text(method: str, options: dict) -> str:
    return method + "".join(f" ({k} {v})" for k, v in options.items())


def loss_terms_section(metrics_csv: Path, lam: dict, results: dict) -> Section:
    """Per epoch of the SIBNet run: each term raw and its share of the total, and how alike and how
    flat the class maps are; then the class maps' similarity of both final models on the test split."""
    m = read_metrics_csv(metrics_csv)
    n = len(m["epoch"])

    def col(name, i, digits=3):
        v = m.get(name)
        return "–" if v is None or not np.isfinite(v[i]) else f"{v[i]:.{digits}f}"

    rows = []
    for i in range(n):
        shares = [m.get(f"train_{k}_w", np.full(n, np.nan))[i] for k in ("wce", "cd", "sc")]
        total = np.nansum(shares)
        rows.append([int(m["epoch"][i]), col("train_wce", i), col("train_cd", i, 4), col("train_sc", i)]
                    + [f"{100 * s / total:.0f}%" if total > 0 and np.isfinite(s) else "–" for s in shares]
                    + [col("train_map_cos", i), col("val_map_cos", i), col("val_emb_cos", i, 4),
                       col("val_flat_maps", i, 2)])
    cols = ["epoch", "weighted BCE", "L_CD", "L_SC", "share BCE", f"share {lam['lambda_cd']}·L_CD",
            f"share {lam['lambda_sc']}·L_SC", "map cos (train)", "map cos (val)", "embedding cos (val)",
            "flat maps (val)"]
    alike = []
    for name, r in results.items():
        d = r.get("distinctiveness")
        if d is not None:
            alike.append([name, f"{d['map_cosine']['mean']:.3f}", f"{d['embedding_cosine']['mean']:.4f}",
                          d["n_images"]])
    parts = [
        "Each term of SIBNet's loss per epoch (mean over the epoch's batches): its raw value and its share of the "
        "total after the loss balance and the lambdas. Then how alike the K class maps of an image are (mean "
        "pairwise cosine of the normalised maps; 1: one map for every class) on the training batches and on 32 "
        "validation images, the same for their embeddings by the model (what L_CD sees), and the share of flat "
        "(uniform or zero) maps. A model whose maps collapse shows map cosine near 1 or many flat maps.",
        Table(cols, rows, caption="From the SIBNet run's metrics.csv.")]
    if alike:
        parts.append(Table(["model", "map cos (test)", "embedding cos (test)", "images"], alike,
                           caption="Both final models' maps on the test split (the same method and options)."))
    return Section("Loss terms and class maps", parts)


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def plan_for(quick: bool = False, **changes) -> DemoPlan:
    """The default (or quick) plan with the given fields replaced (``None`` values ignored)."""
    base = QUICK if quick else DemoPlan()
    return replace(base, **{k: v for k, v in changes.items() if v is not None})
