"""MedMNIST ``.npz`` files of any flag and size, read from a local path (no download).

``root`` is an ``.npz`` file or a folder holding ``{flag}.npz`` / ``{flag}_{size}.npz`` (give ``flag``
and ``npz_size`` when it holds several). Keys: ``{split}_images`` (N, H, W) grey or (N, H, W, 3)
RGB uint8, ``{split}_labels`` (N, L).

* ``split``: ``"train"``, ``"val"``, ``"test"``; ``"all"`` = the three together. The training pool for
  patient-wise folds is ``"train"``.
* ``task`` is inferred unless given: L == 1 -> ``"multiclass"`` with C = max label + 1 over all
  splits (e.g. pneumoniamnist: 2 classes, one-hot); L > 1 with values in {0, 1} -> ``"multilabel"``
  (e.g. chestmnist: 14 columns).
* MedMNIST records no patient ids: ``patient`` is the image's own id (``{split}_{index}``), so
  splits are image-wise.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from .base import DatasetInfo
from .imageio import convert_channels
from .records import Record, RecordDataset, nonempty
from .transforms import resize_image

SPLITS = ("train", "val", "test", "all")
CLASS_NAMES = {
    "pneumoniamnist": ("normal", "pneumonia"),
    "chestmnist": ("atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule", "pneumonia",
                   "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis", "pleural", "hernia"),
    "breastmnist": ("malignant", "normal, benign"),
}


def find_npz(root: Path, flag: str | None = None, npz_size: int | None = None) -> Path:
    if root.is_file():
        return root
    if not root.is_dir():
        raise DataError(f"{root}: MedMNIST .npz file or folder not found")
    if flag:
        names = [f"{flag}_{npz_size}.npz"] if npz_size else [f"{flag}.npz", f"{flag}_28.npz"]
        for n in names:
            if (root / n).is_file():
                return root / n
        raise DataError(f"{root}: no {' or '.join(names)}")
    found = sorted(root.glob("*.npz"))
    if len(found) != 1:
        raise DataError(f"{root}: {'no' if not found else len(found)} .npz files; pass flag= (and npz_size=)")
    return found[0]


def _load(npz: Path, key: str) -> np.ndarray:
    try:
        with np.load(npz) as z:
            if key not in z.files:
                raise DataError(f"{npz}: missing array {key!r} (found: {', '.join(z.files)})")
            return z[key]
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise DataError(f"{npz}: unreadable .npz ({exc})") from None


def _flag_of(npz: Path) -> str:
    """The MedMNIST flag a file name carries: ``{flag}.npz`` or ``{flag}_{size}.npz``."""
    stem, _, tail = npz.stem.rpartition("_")
    return stem if stem and tail.isdigit() else npz.stem


def _read_split(npz: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    """The images (N, H, W, C) uint8 and labels (N, L) of one split of the file, checked."""
    x, y = _load(npz, f"{part}_images"), _load(npz, f"{part}_labels")
    if len(x) != len(y):
        raise DataError(f"{npz}: {part}_images has {len(x)} rows but {part}_labels has {len(y)}")
    if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[-1] not in (1, 3)):
        raise DataError(f"{npz}: {part}_images must be (N, H, W) or (N, H, W, 3), got {x.shape}")
    if x.dtype != np.uint8:
        raise DataError(f"{npz}: {part}_images must be uint8, got {x.dtype}")
    if len(x) == 0:
        raise DataError(f"{npz}: the {part!r} split has no images")
    return (x if x.ndim == 4 else x[..., None]), np.asarray(y).reshape(len(y), -1)


def _read_splits(npz: Path, parts: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The images and labels of the splits ``parts`` one after the other, and their ids (``{split}_{index}``)."""
    images, labels, ids = [], [], []
    for p in parts:
        x, y = _read_split(npz, p)
        images.append(x)
        labels.append(y)
        ids += [f"{p}_{i}" for i in range(len(x))]
    x = np.concatenate(images) if images else np.zeros((0, 1, 1, 1), np.uint8)
    return x, np.concatenate(labels), ids


def _multiclass_targets(npz: Path, y: np.ndarray, ids: list[str], num_classes: int | None) -> tuple[np.ndarray, int]:
    """One-hot targets of one-column class labels, and the number of classes (max label + 1 over all splits
    unless given)."""
    if y.shape[1] != 1:
        raise DataError(f"{npz}: multiclass labels must have one column, found {y.shape[1]}")
    if num_classes is None:
        every = np.concatenate([_load(npz, f"{p}_labels").ravel() for p in ("train", "val", "test")])
        num_classes = int(every.max()) + 1
    bad = (y[:, 0] < 0) | (y[:, 0] >= num_classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{npz}: {ids[i].rsplit('_', 1)[0]}_labels row {ids[i].rsplit('_', 1)[1]}: "
                        f"unknown label value {y[i, 0]} (expected 0..{num_classes - 1})")
    return np.eye(num_classes, dtype=np.float32)[y[:, 0].astype(int)], num_classes


def _multilabel_targets(npz: Path, y: np.ndarray, ids: list[str]) -> np.ndarray:
    """Float32 targets of 0/1 label columns."""
    bad = ~np.isin(y, (0, 1)).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{npz}: labels of {ids[i]}: unknown label value in {y[i].tolist()} (expected 0/1)")
    return y.astype(np.float32)


def _class_names(flag: str, class_names, num_classes: int) -> tuple[str, ...]:
    """``class_names``, else the flag's known names, else ``class_0``, ``class_1``, ... (also when the count
    does not match)."""
    names = (tuple(class_names) if class_names
             else CLASS_NAMES.get(flag, tuple(f"class_{i}" for i in range(num_classes))))
    if len(names) != num_classes:
        names = tuple(f"class_{i}" for i in range(num_classes))
    return names


class MedMNIST(RecordDataset):
    """A MedMNIST split held in memory; see the module doc."""

    def __init__(self, root, split: str = "train", image_size=128, *, flag: str | None = None,
                 npz_size: int | None = None, task: str | None = None, num_classes: int | None = None,
                 class_names=None, channels: int | None = None, **common):
        if split not in SPLITS:
            raise ConfigError(f"medmnist: split must be one of {SPLITS}, got {split!r}")
        npz = find_npz(Path(root), flag, npz_size)
        flag = _flag_of(npz) if flag is None else flag
        x, y, ids = _read_splits(npz, ("train", "val", "test") if split == "all" else (split,))
        if task is None:
            task = "multiclass" if y.shape[1] == 1 else "multilabel"
        if task == "multiclass":
            onehot, num_classes = _multiclass_targets(npz, y, ids, num_classes)
        elif task == "multilabel":
            onehot, num_classes = _multilabel_targets(npz, y, ids), y.shape[1]
        else:
            raise ConfigError(f"medmnist: task must be 'multiclass' or 'multilabel', got {task!r}")
        names = _class_names(flag, class_names, num_classes)
        records = [Record(id=ids[i], patient=ids[i], label=onehot[i], where=f"{npz.name} {ids[i]}")
                   for i in range(len(ids))]
        nonempty(records, f"medmnist {npz}", split)
        self.images = x
        self._index = {r.id: i for i, r in enumerate(records)}
        self.npz = npz
        channels = int(channels or x.shape[-1])
        info = DatasetInfo(name="medmnist", class_names=names, task=task, in_channels=channels,
                           extra={"flag": flag, "npz": str(npz), "source_size": tuple(x.shape[1:3])})
        super().__init__(records, info, root=npz.parent, image_size=image_size, channels=channels, split=split,
                         **common)

    def load_arrays(self, i):
        arr = convert_channels(self.images[self._index[self.records[i].id]], self.channels, self.npz)
        return {"image": resize_image(arr, 255.0, self.image_size)}

    def cache_key_parts(self):
        st = os.stat(self.npz)
        ids = hashlib.sha256("\n".join(r.id for r in self.records).encode()).hexdigest()
        return ["MedMNIST", str(self.npz), st.st_size, st.st_mtime_ns, ids, self.image_size, self.channels]
