"""Report figures (matplotlib, Agg backend): training curves, saliency overlays, overlays beside masks.

Conventions
-----------
* Images are shown as the [0, 1] intensities before normalisation (grey for one channel, the
  first three channels as RGB otherwise).
* Saliency overlays show the positive part of each map (``ReLU``) with the ``jet`` colour map at
  alpha 0.5. The colour scale of the maps of ONE image is shared by its classes: each map is divided
  by the largest value over all classes of that image (and, in :func:`case_figure`, over the
  models shown), so a weak map looks weak beside a strong one. A map that is zero everywhere stays
  blank.
* Ground-truth masks are drawn as contours at level 0.5 (lime).
* Every function returns a ``matplotlib.figure.Figure``; :func:`sibnet.report.html.figure_png` turns
  it into PNG bytes and :func:`save_figure` writes it to a file.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import DataError, SibnetError

MASK_COLOUR = "lime"
MARKS_COLOUR = "magenta"


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (imported on first use: matplotlib is optional)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG to ``path`` (folders created) and close it."""
    plt = pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    except OSError as exc:
        raise SibnetError(f"{path}: cannot write the figure ({exc.strerror or exc})") from None
    finally:
        plt.close(fig)
    return path


def read_metrics_csv(path: str | Path) -> dict[str, np.ndarray]:
    """Columns of a run's ``metrics.csv`` as float arrays (empty cells -> nan)."""
    path = Path(path)
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except FileNotFoundError:
        raise DataError(f"{path}: metrics file not found") from None
    if not rows:
        raise DataError(f"{path}: metrics file has no rows")
    if "epoch" not in rows[0]:
        raise DataError(f"{path}: metrics file lacks the 'epoch' column")
    out = {}
    for col in rows[0]:
        vals = []
        for r, row in enumerate(rows, start=2):
            text = (row.get(col) or "").strip()
            try:
                vals.append(float(text) if text else math.nan)
            except ValueError:
                raise DataError(f"{path}: row {r}, column {col!r}: not a number: {text!r}") from None
        out[col] = np.asarray(vals)
    return out


CURVES = (("train_total", "training loss (total)"), ("train_wce", "training loss (weighted BCE/CE)"),
          ("val_auroc", "validation mean AUROC"))


def training_curves(runs: Mapping[str, str | Path | dict], columns=CURVES):
    """One panel per column of ``metrics.csv`` against the epoch, one line per run.

    ``runs`` maps a run's name to its ``metrics.csv`` path (or to the dict of
    :func:`read_metrics_csv`). Columns a run does not have are skipped for that run.
    """
    plt = pyplot()
    data = {name: read_metrics_csv(v) if not isinstance(v, dict) else v for name, v in runs.items()}
    fig, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 3.2), squeeze=False)
    for ax, (col, title) in zip(axes[0], columns):
        for name, d in data.items():
            if col in d and np.isfinite(d[col]).any():
                ax.plot(d["epoch"], d[col], marker="o", label=name)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if len(d["epoch"]) and np.nanmax(d["epoch"]) <= 20:
            ax.set_xticks(np.unique(d["epoch"][np.isfinite(d["epoch"])]))
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def _show_image(ax, image: np.ndarray) -> None:
    image = np.asarray(image, dtype=float)
    if image.ndim == 3 and image.shape[0] == 1:
        image = image[0]
    if image.ndim == 2:
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(np.clip(np.moveaxis(image[:3], 0, -1), 0, 1))
    ax.set_xticks([])
    ax.set_yticks([])


def _scale(maps: np.ndarray) -> float:
    top = float(np.max(np.maximum(maps, 0))) if maps.size else 0.0
    return top if top > 0 else 1.0


def _overlay(ax, image, heat: np.ndarray, scale: float, mask: np.ndarray | None = None) -> None:
    _show_image(ax, image)
    ax.imshow(np.maximum(heat, 0) / scale, cmap="jet", vmin=0, vmax=1, alpha=0.5)
    if mask is not None and np.any(mask > 0.5):
        ax.contour(np.asarray(mask, dtype=float), levels=[0.5], colors=[MASK_COLOUR], linewidths=1.2)


def _check(image, maps, names):
    image, maps = np.asarray(image, dtype=float), np.asarray(maps, dtype=float)
    if maps.ndim != 3:
        raise DataError(f"saliency maps must be (K, H, W), got shape {maps.shape}")
    if len(names) != maps.shape[0]:
        raise DataError(f"{len(names)} class names for {maps.shape[0]} maps")
    if image.shape[-2:] != maps.shape[-2:]:
        raise DataError(f"image {image.shape} and maps {maps.shape} differ in size")
    return image, maps


def mass_inside(heat: np.ndarray, mask: np.ndarray) -> float:
    """Share of the positive mass of ``heat`` inside ``mask`` (> 0.5); NaN for a map without positive mass."""
    pos = np.maximum(np.asarray(heat, dtype=float), 0)
    total = pos.sum()
    return float(pos[np.asarray(mask) > 0.5].sum() / total) if total > 0 else float("nan")


def explain_figure(image, maps, class_names: Sequence[str], probs: Sequence[float], title: str = "",
                   method: str = "", mask: np.ndarray | None = None):
    """The image, then one overlay per class whose panel title gives the predicted probability; with a
    ``mask`` (H, W) its contour on every panel and each map's share of positive mass inside it."""
    plt = pyplot()
    image, maps = _check(image, maps, class_names)
    if mask is not None and np.shape(mask) != maps.shape[-2:]:
        raise DataError(f"mask {np.shape(mask)} and maps {maps.shape} differ in size")
    k = maps.shape[0]
    fig, axes = plt.subplots(1, k + 1, figsize=(2.5 * (k + 1), 3.4 if mask is not None else 3.2), squeeze=False)
    _show_image(axes[0][0], image)
    inside = mask is not None and bool(np.any(np.asarray(mask) > 0.5))  # an empty mask (e.g. BUSI normal): no share
    if inside:
        axes[0][0].contour(np.asarray(mask, dtype=float), levels=[0.5], colors=[MASK_COLOUR], linewidths=1.2)
    axes[0][0].set_title("image" + ("" if mask is None else " + mask" if inside else " (mask empty)"), fontsize=9)
    scale = _scale(maps)
    for j in range(k):
        _overlay(axes[0][j + 1], image, maps[j], scale, mask)
        text = f"{class_names[j]}\np = {float(probs[j]):.3f}"
        if inside:
            share = mass_inside(maps[j], mask)
            text += f", in mask {100 * share:.0f}%" if math.isfinite(share) else ", no positive mass"
        axes[0][j + 1].set_title(text, fontsize=9)
    head = title + (f" — {method}" if method else "")
    fig.suptitle(f"{head} (maps share one colour scale)".strip(), fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    return fig


def case_figure(image, mask, label, models: Mapping[str, tuple], class_names: Sequence[str], title: str = "",
                marks=None, marks_name: str = "marks"):
    """Saliency of several models for one case beside the ground-truth mask contours.

    ``mask`` (K, H, W) and ``label`` (K,) are the case's; ``models`` maps a model's name to
    ``(maps (K, H, W), probs (K,))``. Row r is model r: the image with every mask contour, then
    one overlay per class with that class's contour; titles give p and whether the class is present.
    ``marks`` (H, W), optional: the burned-in marks region (:func:`sibnet.evaluation.marks.marks_region`)
    or another region to shade in the first column (``marks_name`` in its title, e.g. "glyph").
    """
    plt = pyplot()
    mask = np.asarray(mask, dtype=float)
    label = np.asarray(label, dtype=float)
    k = len(class_names)
    checked = {n: _check(image, m, class_names)[1] for n, (m, _) in models.items()}
    scale = _scale(np.stack(list(checked.values())))
    rows = len(models)
    fig, axes = plt.subplots(rows, k + 1, figsize=(2.3 * (k + 1), 3.1 * rows), squeeze=False)
    for r, (name, (_, probs)) in enumerate(models.items()):
        ax = axes[r][0]
        _show_image(ax, image)
        for j in range(k):
            if mask[j].max() > 0.5:
                ax.contour(mask[j], levels=[0.5], colors=[MASK_COLOUR], linewidths=1.0)
        if marks is not None and np.any(marks):
            shade = np.zeros((*np.shape(marks), 4))
            shade[np.asarray(marks, dtype=bool)] = (1.0, 0.0, 1.0, 0.8)  # MARKS_COLOUR
            ax.imshow(shade)
        ax.set_title("image + expert masks" + (f" + {marks_name}" if marks is not None else ""), fontsize=8)
        ax.set_ylabel(name, fontsize=10)
        for j in range(k):
            present = "present" if label[j] == 1 else ("uncertain" if label[j] == -1 else "absent")
            _overlay(axes[r][j + 1], image, checked[name][j], scale, mask[j] if label[j] == 1 else None)
            axes[r][j + 1].set_title(f"{class_names[j]} ({present})\np = {float(probs[j]):.2f}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    # a fixed 0.35 inch band for the title, however many rows (tight_layout alone lets it overlap row 1)
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.35 / (3.1 * rows) if title else 0)))
    return fig
