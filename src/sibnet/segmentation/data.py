"""Segmentation samples at their original size, and their resized network inputs.

A :class:`Sample` keeps the decoded image ``(H, W, C)`` (values in [0, 1], float32) and the
ground-truth instance map ``(H, W)`` int64 (0 background, 1..n glands) at the ORIGINAL size, so
that predictions, which are resized back, are scored against the untouched annotation.

:func:`prepare` resizes every image to the network size ``(h, w)`` (bilinear, antialiased, as
:func:`sibnet.data.transforms.resize_image`) and the binary gland mask with nearest neighbour
(as :func:`sibnet.data.transforms.resize_labels`), then applies the normalisation of the
encoder's classifier (``None``, ``"imagenet"`` or ``(mean, std)``).

Sources: ``glas`` (the official GlaS layout, :class:`sibnet.data.glas.GlaS`) and
``synthetic-glands`` (:class:`sibnet.data.synthetic_glands.SyntheticGlands`, tiles of ``size``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.glas import GlaS
from ..data.imageio import read_image, read_mask
from ..data.synthetic_glands import CLASS_NAMES, SyntheticGlands
from ..data.transforms import as_hw, normalizer, resize_labels
from ..errors import ConfigError, DataError

SOURCES = ("glas", "synthetic-glands")


@dataclass
class Sample:
    id: str
    image: np.ndarray  # (H, W, C) float32 in [0, 1]
    instances: np.ndarray  # (H, W) int64
    grade: str = ""


def load_samples(source: str, root=None, split: str = "train", *, limit: int | None = None,
                 ids=None, seed: int = 0, size: int = 128) -> list[Sample]:
    """Samples of ``split`` (the first ``limit``, or those named in ``ids``), at original size.
    ``seed``/``size`` only apply to ``synthetic-glands``."""
    if limit is not None and (isinstance(limit, bool) or int(limit) < 1):
        raise ConfigError(f"limit must be a positive number of images, got {limit!r}")
    if source == "glas":
        if root is None:
            raise ConfigError("dataset 'glas' needs --root (the GlaS folder)")
        ds = GlaS(root, split=split, image_size=64)
        recs = ds.records
        if ids is not None:
            recs = _pick(recs, ids, lambda r: r.id)
        out = []
        for r in recs[:limit]:
            arr, hi = read_image(r.image, 3)
            inst = read_mask(r.mask).astype(np.int64)
            if inst.shape != arr.shape[:2]:
                raise DataError(f"{r.mask}: mask is {inst.shape[1]}x{inst.shape[0]} but its image {r.image} is "
                                f"{arr.shape[1]}x{arr.shape[0]} (width x height)")
            grade = "malignant" if r.label[1] == 1 else "benign"
            out.append(Sample(r.id, np.asarray(arr, np.float32) / np.float32(hi), inst, grade))
        return out
    if source == "synthetic-glands":
        n = limit if limit is not None else None
        ds = SyntheticGlands(None, split=split, size=size, n=n, seed=seed, cache=False)
        out = []
        for i in range(len(ds)):
            rgb, inst = ds.render(i)
            out.append(Sample(f"{split}_{i}", rgb.astype(np.float32) / np.float32(255.0), inst.astype(np.int64),
                              CLASS_NAMES[int(ds.grades[i])]))
        if ids is not None:
            out = _pick(out, ids, lambda s: s.id)
        return out
    raise ConfigError(f"unknown segmentation dataset {source!r}; choose one of {', '.join(SOURCES)}")


def _pick(items, ids, key):
    by = {key(x): x for x in items}
    missing = [i for i in ids if i not in by]
    if missing:
        raise ConfigError(f"image ids not in the split: {', '.join(missing[:5])}")
    return [by[i] for i in ids]


def resize_image_tensor(images: torch.Tensor, size) -> torch.Tensor:
    """(B, C, H, W) float -> (B, C, h, w): bilinear, antialiased, half-pixel centres."""
    h, w = as_hw(size)
    if images.shape[-2:] == (h, w):
        return images
    return F.interpolate(images, size=(h, w), mode="bilinear", align_corners=False, antialias=True)


def prepare(samples: list[Sample], size, normalize=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images (N, C, h, w) float32 normalised, masks (N, h, w) int64 in {0, 1})``."""
    if not samples:
        raise DataError("no images to prepare")
    norm = normalizer(normalize, samples[0].image.shape[2])
    xs, ms = [], []
    for s in samples:
        x = torch.from_numpy(np.ascontiguousarray(s.image.transpose(2, 0, 1)))[None]
        x = resize_image_tensor(x, size)[0].clamp(0.0, 1.0)
        xs.append(norm(x) if norm is not None else x)
        ms.append(torch.from_numpy(resize_labels((s.instances > 0).astype(np.int64), size)))
    return torch.stack(xs), torch.stack(ms)


def class_weights(masks: torch.Tensor, num_classes: int = 2) -> torch.Tensor:
    """Inverse-frequency pixel weights ``N / (K * N_c)`` (1 for every class when balanced)."""
    counts = torch.bincount(masks.reshape(-1), minlength=num_classes)[:num_classes].to(torch.float64)
    if (counts == 0).any():
        raise DataError(f"the training masks lack class(es) {torch.nonzero(counts == 0).flatten().tolist()}")
    return (counts.sum() / (num_classes * counts)).to(torch.float32)


def save_instances_png(path, instances: np.ndarray) -> Path:
    """Write an instance map as a PNG: 8-bit when the labels fit, 16-bit otherwise."""
    from PIL import Image

    inst = np.asarray(instances)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if inst.max(initial=0) < 256:
        Image.fromarray(inst.astype(np.uint8), mode="L").save(path)
    else:
        Image.fromarray(inst.astype(np.uint16)).save(path)
    return path
