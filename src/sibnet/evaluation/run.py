"""Run a trained classifier over a dataset: predictions, saliency maps and their agreement with masks.

Conventions
-----------
* The model is put in eval mode for the whole run (BatchNorm running statistics, no dropout) and
  left in the mode it had.
* Probabilities: sigmoid of the logits for multi-label tasks, softmax for single-label ones.
* Labels for the metrics: uncertain labels (-1) are masked out (``nan``) for AUROC/AUPRC, as
  :func:`sibnet.evaluation.classification.classification_metrics` refuses them; the number masked
  is reported. For single-label tasks the one-hot labels are scored one-vs-rest.
* Saliency: the method's maps of every class, computed in eval mode on the normalised input; the
  agreement (:mod:`sibnet.evaluation.agreement`) scores each (image, class) pair whose label is 1
  and whose expert mask is nonempty; the class distinctiveness (how alike the K maps of an image
  are, and their embeddings: L_CD) needs no masks. ``max_maps`` limits how many images (the first ones) get maps.
* Marks (``marks=True``, default: where the dataset's ``info.extra["burned_in_marks"]`` is true, as
  for BUSI): the share of each labelled class's map on the bright thin marks of its image
  (:func:`sibnet.evaluation.marks.marks_share`), overall and per class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Subset

from ..errors import SibnetError
from ..saliency import get as get_saliency
from .agreement import saliency_agreement
from .classification import classification_metrics
from .distinctiveness import map_distinctiveness
from .marks import FOOTPRINT, THRESHOLD, marks_share, mass_share


@dataclass
class Predictions:
    probs: np.ndarray  # (N, K)
    labels: np.ndarray  # (N, K) as stored (may hold -1 or nan)
    ids: list


def _loader(dataset, batch_size: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)


def probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Softmax of the logits for single-label (``multiclass``) tasks, sigmoid otherwise (in float32)."""
    logits = logits.float()
    return torch.softmax(logits, 1) if task == "multiclass" else torch.sigmoid(logits)


def predict(model: nn.Module, dataset, task: str = "multilabel", batch_size: int = 32,
            device: str | torch.device = "cpu") -> Predictions:
    """Probabilities, stored labels and ids of every item of ``dataset`` (in order)."""
    if len(dataset) == 0:
        raise SibnetError("the dataset to evaluate is empty")
    was = model.training
    model.eval()
    probs, labels, ids = [], [], []
    try:
        with torch.no_grad():
            for batch in _loader(dataset, batch_size):
                probs.append(probabilities(model(batch["image"].to(device)), task).cpu())
                labels.append(batch["label"].float())
                ids.extend(str(i) for i in batch["id"])
    finally:
        model.train(was)
    return Predictions(torch.cat(probs).numpy(), torch.cat(labels).numpy(), ids)


def metric_labels(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels for AUROC/AUPRC: -1 (uncertain) -> nan; returns (labels, number masked)."""
    y = np.asarray(labels, dtype=np.float64).copy()
    uncertain = y == -1
    y[uncertain] = np.nan
    return y, int(uncertain.sum())


def compute_maps(model: nn.Module, dataset, method, indices=None, batch_size: int = 8,
                 device: str | torch.device = "cpu", **options) -> dict:
    """Saliency maps of every class for ``indices`` (default all) in eval mode.

    Returns ``{"maps" (n, K, H, W) float32, "images" (n, C, H, W), "labels" (n, K),
    "masks" (n, K, H, W) or None, "probs" (n, K), "indices"}``.
    """
    fn = get_saliency(method)
    indices = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    part = Subset(dataset, indices)
    was = model.training
    model.eval()
    out = {"maps": [], "images": [], "labels": [], "masks": [], "logits": []}
    try:
        for batch in _loader(part, batch_size):
            x = batch["image"].to(device)
            with torch.no_grad():
                out["logits"].append(model(x).float().cpu())
            maps = fn(model, x, **options)
            out["maps"].append(maps.detach().float().cpu())
            out["images"].append(batch["image"])
            out["labels"].append(batch["label"].float())
            if "mask" in batch:
                out["masks"].append(batch["mask"].float())
    finally:
        model.train(was)
    result = {k: torch.cat(v).numpy() if v else None for k, v in out.items()}
    result["indices"] = indices
    return result


def evaluate(model: nn.Module, dataset, *, task: str | None = None, class_names=None, method=None,
             n_boot: int = 1000, seed: int = 0, max_maps: int | None = None, batch_size: int = 32,
             device: str | torch.device = "cpu", saliency_options: dict | None = None,
             embed_size: int | None = 32, marks: bool | None = None) -> dict:
    """Classification metrics with bootstrap intervals; with a saliency ``method``, the maps'
    class distinctiveness (:mod:`sibnet.evaluation.distinctiveness`, maps embedded at ``embed_size``)
    and, where masks exist, their agreement with them.

    With ``marks`` (default: the dataset's ``info.extra["burned_in_marks"]``), also the share of the
    labelled classes' maps on burned-in marks (:func:`marks_summary`); on synthetic data drawn with the
    shortcut glyph, the shortcut class's map share inside the glyph (:func:`glyph_summary`).

    Returns ``{"classification": ..., "agreement": ... or None, "distinctiveness": ... or None,
    "marks": ... or None, "glyph": ... or None, "n_uncertain_masked", "predictions": Predictions,
    "maps": compute_maps(...) or None}``.
    """
    info = getattr(dataset, "info", None)
    task = task or (info.task if info is not None else "multilabel")
    names = list(class_names or (info.class_names if info is not None else []))
    pred = predict(model, dataset, task, batch_size, device)
    y, masked = metric_labels(pred.labels)
    if pred.probs.shape[1] != y.shape[1]:
        raise SibnetError(f"the model has {pred.probs.shape[1]} outputs but the dataset has {y.shape[1]} labels")
    cls = classification_metrics(pred.probs, y, class_names=names or None, n_boot=n_boot, seed=seed)
    agreement, maps, distinct, on_marks, on_glyph = None, None, None, None, None
    if marks is None:
        marks = bool(getattr(info, "extra", {}).get("burned_in_marks", False))
    has_masks = bool(getattr(info, "has_masks", False))
    n = len(dataset) if max_maps is None else min(int(max_maps), len(dataset))
    method_name = method if isinstance(method, str) else getattr(method, "__name__", "custom")
    if method is not None and n > 0:
        maps = compute_maps(model, dataset, method, range(n), batch_size=max(1, min(batch_size, 16)),
                            device=device, **(saliency_options or {}))
        if has_masks and maps["masks"] is not None:
            agreement = saliency_agreement(maps["maps"], maps["masks"], maps["labels"], class_names=names or None)
            agreement["n_images"] = n
            agreement["method"] = method_name
        if maps["maps"].shape[1] > 1:
            distinct = map_distinctiveness(model, maps["maps"], maps["images"], embed_size=embed_size,
                                           batch_size=max(1, min(batch_size, 16)), device=device)
            distinct["method"] = method_name
        if marks:
            on_marks = marks_summary(maps["maps"], maps["images"], maps["labels"], names)
            on_marks["method"] = method_name
        on_glyph = dataset_glyph_summary(dataset, maps, names)
        if on_glyph is not None:
            on_glyph["method"] = method_name
    return {"classification": cls, "agreement": agreement, "distinctiveness": distinct, "marks": on_marks,
            "glyph": on_glyph, "n_uncertain_masked": masked, "predictions": pred, "maps": maps}


def agreement_rows(agreement: dict) -> list[dict]:
    """Per-class agreement rows (then ``mean``) for a CSV or a table."""
    rows = []
    for name, c in agreement["per_class"].items():
        rows.append({"class": name, "dice": c["dice"]["mean"], "dice_sd": c["dice"]["sd"],
                     "hd95": c["hd95"]["mean"], "hd95_sd": c["hd95"]["sd"], "ssim": c["ssim"]["mean"],
                     "ssim_sd": c["ssim"]["sd"], "n_pairs": c["n_pairs"], "n_empty_maps": c["n_empty_maps"]})
    m = agreement["mean"]
    rows.append({"class": "mean", "dice": m["dice"], "dice_sd": None, "hd95": m["hd95"], "hd95_sd": None,
                 "ssim": m["ssim"], "ssim_sd": None, "n_pairs": sum(r["n_pairs"] for r in rows),
                 "n_empty_maps": sum(r["n_empty_maps"] for r in rows)})
    return rows


def marks_summary(maps, images, labels, class_names) -> dict:
    """:func:`marks_share` of the labelled classes' maps: ``{"mean", "sd", "n", "area_mean",
    "enrichment", "per_class": {name: {"mean", "n"}}, "footprint", "threshold"}``."""
    out = marks_share(maps, images, labels)
    share, y = out.pop("share"), np.asarray(labels)
    out.pop("area")
    per_class = {}
    for j, name in enumerate(class_names or [f"class_{j}" for j in range(share.shape[1])]):
        v = share[(y[:, j] == 1) & np.isfinite(share[:, j]), j]
        per_class[str(name)] = {"mean": float(v.mean()) if v.size else None, "n": int(v.size)}
    return {**out, "per_class": per_class, "footprint": FOOTPRINT, "threshold": THRESHOLD}


def glyph_of(dataset) -> str | None:
    """The shortcut class of a synthetic dataset drawn with the glyph (per-image flags in ``.marker``, the box in
    ``info.extra["marker_box"]``), or None."""
    extra = getattr(getattr(dataset, "info", None), "extra", None) or {}
    if extra.get("shortcut") and "marker_box" in extra and hasattr(dataset, "marker"):
        return str(extra["shortcut"])
    return None


def glyph_region(box, shape) -> np.ndarray:
    """Boolean (H, W) image of the glyph's pixel box ``(row0, row1, col0, col1)`` (end-exclusive)."""
    r0, r1, c0, c1 = (int(v) for v in box)
    region = np.zeros(tuple(shape), dtype=bool)
    region[r0:r1, c0:c1] = True
    return region


def glyph_summary(maps, marker, box, class_names, shortcut: str) -> dict:
    """Share of each class's map (positive mass) inside the synthetic shortcut glyph's pixel ``box``
    ``(row0, row1, col0, col1)`` on the images that carry the glyph (``marker`` True), whatever their labels
    (outside ``train`` the glyph is independent of the finding, so a model that reads it puts mass there on
    any image that has it). ``{"mean": the shortcut class's share, "sd", "n": glyph images, "area": the
    box's fraction of the image (a uniform map's share), "per_class": {name: mean share}, "shortcut"}``."""
    m = np.asarray(maps, dtype=np.float64)
    flags = np.asarray(marker, dtype=bool)
    if m.ndim != 4 or flags.shape != (m.shape[0],):
        raise SibnetError(f"glyph share: maps (N, K, H, W) and one glyph flag per image expected, got maps "
                          f"{tuple(m.shape)} and {tuple(flags.shape)} flags")
    names = [str(c) for c in class_names]
    if shortcut not in names:
        raise SibnetError(f"glyph share: the shortcut class {shortcut!r} is not one of {names}")
    region = glyph_region(box, m.shape[-2:])
    share = mass_share(m[flags], region)  # (n, K), nan where a map has no positive mass
    finite = [share[:, j][np.isfinite(share[:, j])] for j in range(share.shape[1])]
    means = [float(v.mean()) if v.size else None for v in finite]
    k = names.index(shortcut)
    return {"mean": means[k], "sd": float(finite[k].std(ddof=1)) if finite[k].size > 1 else None,
            "n": int(flags.sum()), "area": float(region.mean()), "per_class": dict(zip(names, means)),
            "shortcut": shortcut}


def dataset_glyph_summary(dataset, maps: dict, class_names) -> dict | None:
    """:func:`glyph_summary` of :func:`compute_maps` output on ``dataset`` (its glyph flags at the maps'
    indices), or None where the dataset has no shortcut glyph."""
    shortcut = glyph_of(dataset)
    if shortcut is None:
        return None
    return glyph_summary(maps["maps"], np.asarray(dataset.marker)[maps["indices"]], dataset.info.extra["marker_box"],
                         class_names, shortcut)
