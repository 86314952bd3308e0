"""Contour figure of predicted and true glands (the paper's Fig. 7 style).

One row per image, one column per model: the image with the true glands' outlines in red and
the predicted glands' outlines in green (each instance outlined on its own, at the 0.5 level of
its binary mask with :func:`skimage.measure.find_contours`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import Sample


def _outline(ax, instances: np.ndarray, colour: str, width: float) -> None:
    from skimage.measure import find_contours

    for k in np.unique(instances):
        if k == 0:
            continue
        for c in find_contours((instances == k).astype(np.float32), 0.5):
            ax.plot(c[:, 1], c[:, 0], color=colour, linewidth=width)


def contour_figure(samples: list[Sample], predictions: dict[str, list[np.ndarray]], path, *,
                   scores: dict[str, list[dict]] | None = None, dpi: int = 110) -> Path:
    """Write the figure to ``path``; ``predictions[model][i]`` is the instance map of ``samples[i]``,
    ``scores[model][i]`` (optional) a :func:`~sibnet.evaluation.glas.glas_scores` dict shown in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(predictions)
    fig, axes = plt.subplots(len(samples), len(names), figsize=(3.6 * len(names), 2.6 * len(samples)), squeeze=False)
    for i, s in enumerate(samples):
        for j, name in enumerate(names):
            ax = axes[i, j]
            ax.imshow(np.clip(s.image, 0, 1))
            _outline(ax, s.instances, "red", 1.0)
            _outline(ax, predictions[name][i], "lime", 1.0)
            title = f"{name}\n{s.id} ({s.grade})" if i == 0 else f"{s.id} ({s.grade})"
            if scores is not None:
                sc = scores[name][i]
                title += f"  F1 {sc['f1']:.2f}  Dice {sc['pixel_dice']:.2f}"
            ax.set_title(title, fontsize=8)
            ax.set_axis_off()
    fig.suptitle("true glands (red), predicted glands (green)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
