"""A grid of sample images with the contours of their masks (for ``sibnet data summary --grid``).

Each tile shows one image (grey or RGB, the [0, 1] intensities before normalisation), the contour
of each mask channel at level 0.5 in that class's colour, and a title with the id and the labels
that are 1. Samples are chosen with ``numpy.random.default_rng(seed)`` without replacement.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def draw_grid(dataset, path, n: int = 16, seed: int = 0, columns: int | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, min(int(n), len(dataset)))
    idx = np.sort(np.random.default_rng(seed).choice(len(dataset), size=n, replace=False))
    cols = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    names = dataset.info.class_names
    colours = plt.get_cmap("tab10")
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.9 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), idx):
        item = dataset[int(i)]
        img = item["image"].numpy()
        if img.shape[0] == 1:
            ax.imshow(img[0], cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(np.clip(np.moveaxis(img[:3], 0, -1), 0, 1))
        mask = item.get("mask")
        if mask is not None:
            for k in range(mask.shape[0]):
                m = mask[k].numpy()
                if m.max() > 0:
                    ax.contour(m, levels=[0.5], colors=[colours(k % 10)], linewidths=1.0)
        label = item["label"].numpy()
        present = [names[k] for k in np.flatnonzero(label == 1)]
        ax.set_title(f"{item['id'][-22:]}\n{', '.join(present)[:40] or 'none'}", fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
