"""The dataset class that every file-based loader builds: one :class:`Record` per image.

Reading an item is two steps, so that the cache (:mod:`sibnet.data.cache`) can replace the first:

1. :meth:`RecordDataset.load_arrays` decodes the image (and its mask file, if any) and resizes them
   to ``image_size``: ``{"image": (C, h, w) uint8 | float16, "mask_map": (h, w) int32}``
   (see :func:`sibnet.data.transforms.resize_image` for the pixel convention);
2. :meth:`RecordDataset.make_item` turns those arrays into the item dict of
   :mod:`sibnet.data.base` (label, masks, id, patient), then applies the augmentation and the
   normalisation.

Masks (``mask_mode``) from a mask file, read as an integer label map (0 background):
``"binary"`` -> ``mask`` (1, h, w) = map > 0 (the segmentation target);
``"class"``  -> ``mask`` (K, h, w): map > 0 in the channel of every class the image is labelled
with (1), zeros elsewhere (the per-class expert mask of the item interface);
``instances=True`` adds ``instances`` (h, w) int64, the label map itself (0 background, 1..n).
A record's ``mask`` may be a tuple of files (one image annotated in several): their label maps are
merged by the pixel-wise maximum, which is their union for 0/255 masks.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from .base import DatasetInfo
from .imageio import read_image, read_mask
from .transforms import LightAugment, as_hw, normalizer, resize_image, resize_labels, to_unit_float

MASK_MODES = ("binary", "class")


@dataclass
class Record:
    id: str
    patient: str
    label: np.ndarray  # (K,) float32
    image: Path | None = None
    mask: Path | tuple[Path, ...] | None = None  # several files: merged (pixel-wise maximum)
    where: str = ""  # e.g. "train.csv line 12", for messages
    extra: dict = field(default_factory=dict)


def mask_files(record: Record) -> tuple[Path, ...]:
    """The record's mask file(s) as a tuple (empty without a mask)."""
    if record.mask is None:
        return ()
    return tuple(record.mask) if isinstance(record.mask, (tuple, list)) else (record.mask,)


def nonempty(records: list, source: str, split: str) -> list:
    if not records:
        raise DataError(f"{source}: split {split!r} has no images")
    return records


class RecordDataset(Dataset):
    """A list of :class:`Record` read as items of the :mod:`sibnet.data.base` interface."""

    def __init__(self, records: list[Record], info: DatasetInfo, *, root: Path | None, image_size=128,
                 channels: int = 1, augment: bool | LightAugment = False, normalize=None, seed: int = 0,
                 mask_mode: str = "binary", instances: bool = False, split: str = "train"):
        if mask_mode not in MASK_MODES:
            raise ConfigError(f"mask_mode must be one of {MASK_MODES}, got {mask_mode!r}")
        self.records = list(records)
        self.root = Path(root).resolve() if root is not None else None
        self.image_size = as_hw(image_size)
        self.channels = int(channels)
        self.mask_mode = mask_mode
        self.instances = bool(instances)
        self.split = split
        self.seed = int(seed)
        if augment is True:
            augment = LightAugment(seed)
        self.augment = augment or None
        self.normalize = normalize
        self._norm = normalizer(normalize, self.channels)
        self.info = info
        self.with_mask_files = any(r.mask is not None for r in self.records)

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return len(self.records)

    @property
    def patients(self) -> list[str]:
        return [r.patient for r in self.records]

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.records]

    @property
    def labels(self) -> np.ndarray:
        """``(N, K)`` float32 label matrix (as in the items)."""
        k = self.info.num_classes
        return np.stack([r.label for r in self.records]) if self.records else np.zeros((0, k), np.float32)

    def subset(self, indices, split: str | None = None) -> "RecordDataset":
        """The same dataset restricted to ``indices`` (settings shared)."""
        out = copy.copy(self)
        out.records = [self.records[int(i)] for i in indices]
        if split is not None:
            out.split = split
        return out

    # ------------------------------------------------------------------ step 1
    def load_arrays(self, i: int) -> dict[str, np.ndarray]:
        rec = self.records[i]
        arr, hi = read_image(rec.image, self.channels)
        out = {"image": resize_image(arr, hi, self.image_size)}
        if rec.mask is not None:
            m = None
            for path in mask_files(rec):
                one = read_mask(path)
                if one.shape != arr.shape[:2]:
                    raise DataError(f"{path}: mask is {one.shape[1]}x{one.shape[0]} (width x height) but its image "
                                    f"{rec.image} is {arr.shape[1]}x{arr.shape[0]}")
                if one.max(initial=0) > np.iinfo(np.int32).max or one.min(initial=0) < 0:
                    raise DataError(f"{path}: mask values must be in 0..2**31-1")
                m = one if m is None else np.maximum(m, one)
            out["mask_map"] = resize_labels(m.astype(np.int32), self.image_size)
        elif self.with_mask_files:  # an image without annotation: empty mask
            out["mask_map"] = np.zeros(self.image_size, dtype=np.int32)
        return out

    def array_keys(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Shape (per item) and dtype of each array of :meth:`load_arrays`, for the cache."""
        first = self.load_arrays(0)
        return {k: (v.shape, v.dtype) for k, v in first.items()}

    def cache_key_parts(self) -> list:
        """What the cached arrays depend on: class, root, size, channels, and each file's path,
        size and modification time."""
        parts: list = [type(self).__name__, str(self.root), self.image_size, self.channels, 1]
        for r in self.records:
            for p in (r.image, *(mask_files(r) or (None,))):
                if p is None:
                    parts.append(None)
                    continue
                try:
                    st = os.stat(p)
                    parts.append((str(p), st.st_size, st.st_mtime_ns))
                except OSError:
                    parts.append((str(p), -1, -1))
        return parts

    # ------------------------------------------------------------------ step 2
    def make_item(self, i: int, arrays: dict[str, np.ndarray]) -> dict:
        rec = self.records[i]
        item = {
            "image": to_unit_float(arrays["image"]),
            "label": torch.from_numpy(np.asarray(rec.label, dtype=np.float32).copy()),
            "id": rec.id,
            "patient": rec.patient,
        }
        item.update(self.masks(i, arrays))
        if self.augment is not None:
            item = self.augment(item)
        if self._norm is not None:
            item["image"] = self._norm(item["image"])
        return item

    def masks(self, i: int, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """``mask`` (and ``instances``) from the mask file's label map; subclasses may override."""
        if "mask_map" not in arrays:
            return {}
        m = torch.from_numpy(np.asarray(arrays["mask_map"]).astype(np.int64))
        fg = (m > 0).to(torch.float32)
        if self.mask_mode == "binary":
            mask = fg[None]
        else:
            present = torch.from_numpy(np.asarray(self.records[i].label) == 1)
            mask = present.to(torch.float32)[:, None, None] * fg[None]
        out = {"mask": mask}
        if self.instances:
            out["instances"] = m
        return out

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i = i % len(self)
        return self.make_item(i, self.load_arrays(i))
