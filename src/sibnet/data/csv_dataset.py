"""A generic CSV of image paths and labels, for users' own data.

Columns (names are stripped of spaces):

* ``path`` (required): the image, relative to the CSV's folder or absolute. Greyscale, RGB,
  8- or 16-bit PNG, JPEG, BMP, TIFF, and DICOM (``.dcm``; needs ``pip install sibnet[dicom]``).
* label columns: ``labels=[...]``, or every column other than path/mask/patient/split/id.
  ``task="multilabel"`` (default): each column holds 1, 0, -1 (uncertain, kept) or blank (``nan``,
  masked out). ``task="multiclass"``: one label column whose values are class names (or integers);
  the classes are ``class_names`` if given, else the sorted distinct values; one-hot.
* ``mask`` (optional): a mask image per row (blank: no annotation, an empty mask), read as a label
  map; ``mask_mode`` as in :mod:`sibnet.data.records`. Must have its image's size.
* ``patient`` (optional, else each row is its own patient), ``split`` (optional: train/val/test;
  the splits must not share a patient), ``id`` (optional, else the path).

A row whose image or mask file is missing is an error, or (``missing="skip"``) left out and
described in ``.skipped``.

``split``: without a ``split`` column every row belongs to ``"train"`` (the training pool) and
``"all"``; with one, ``"train"``, ``"val"``, ``"test"`` select its rows. ``root`` is the CSV file or
a folder holding exactly one ``.csv``. ``channels`` defaults to that of the first image (1 or 3).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from .base import DatasetInfo
from .imageio import read_image
from .records import Record, RecordDataset, nonempty
from .splits import check_disjoint
from .tables import read_table

RESERVED = ("path", "mask", "patient", "split", "id")
SPLITS = ("train", "val", "test", "all")
_ML = {"1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0, "-1": -1.0, "-1.0": -1.0, "": np.nan}


def find_csv(root: Path) -> Path:
    if root.is_file():
        return root
    if not root.is_dir():
        raise DataError(f"{root}: CSV file or folder not found")
    found = sorted(root.glob("*.csv"))
    if len(found) != 1:
        raise DataError(f"{root}: {'no' if not found else len(found)} .csv files; pass the CSV file itself as root")
    return found[0]


def _row_file(value: str, base: Path, what: str, missing: str, skipped: list) -> Path | None:
    """The file a CSV cell names (relative paths from the CSV's folder ``base``). A missing file is a
    DataError (``missing="error"``) or is noted in ``skipped`` and gives None (``missing="skip"``)."""
    path = Path(value)
    path = path if path.is_absolute() else base / path
    if path.is_file():
        return path
    msg = f"{what} {path} not found"
    if missing == "error":
        raise DataError(msg)
    skipped.append(msg)
    return None


def _label_columns(csv_path: Path, columns: list[str], labels, task: str) -> list[str]:
    """The label columns: ``labels`` if given, else every column that is not reserved (exactly one for multiclass)."""
    label_cols = list(labels) if labels else [c for c in columns if c not in RESERVED and c]
    if not label_cols:
        raise DataError(f"{csv_path}: no label columns (columns found: {', '.join(columns)})")
    if task == "multiclass" and len(label_cols) != 1:
        raise ConfigError(f"csv: task 'multiclass' needs exactly one label column, got {label_cols}")
    return label_cols


def _class_names(rows: list, label_cols: list[str], task: str, class_names) -> tuple[str, ...]:
    """The label columns (multilabel), else ``class_names`` or the sorted distinct values of the label column
    (numerically when they are all integers)."""
    if task != "multiclass":
        return tuple(label_cols)
    col = label_cols[0]
    distinct = sorted({r[col] for _, r in rows} - {""})
    if all(v.lstrip("-").isdigit() for v in distinct):
        distinct.sort(key=int)
    return tuple(class_names) if class_names else tuple(distinct)


def _row_label(row: dict, where: str, task: str, label_cols: list[str], names: tuple[str, ...]) -> np.ndarray:
    """The (K,) float32 label of one row: one-hot of its class (multiclass), else 1, 0, -1 or nan per column."""
    if task == "multiclass":
        v = row[label_cols[0]]
        if v not in names:
            raise DataError(f"{where}, column {label_cols[0]!r}: unknown label value {v!r} "
                            f"(classes: {', '.join(names)})")
        return np.array([v == c for c in names], dtype=np.float32)
    vals = []
    for c in label_cols:
        if row[c] not in _ML:
            raise DataError(f"{where}, column {c!r}: unknown label value {row[c]!r} (expected 1, 0, -1 or blank)")
        vals.append(_ML[row[c]])
    return np.array(vals, dtype=np.float32)


def _row_record(row: dict, where: str, *, base: Path, has_split: bool, task: str, label_cols: list[str],
                names: tuple[str, ...], missing: str, skipped: list) -> tuple[str, Record] | None:
    """The split (train, val or test) and the record of one CSV row; None when a file of the row is missing and
    ``missing="skip"`` (the reason is added to ``skipped``)."""
    part = row.get("split", "train") or "train"
    if has_split and part not in ("train", "val", "test"):
        raise DataError(f"{where}, column 'split': unknown value {part!r} (expected train, val or test)")
    if not row["path"]:
        raise DataError(f"{where}, column 'path': empty")
    image = _row_file(row["path"], base, f"{where}, column 'path': image", missing, skipped)
    if image is None:
        return None
    mask = None
    if row.get("mask"):
        mask = _row_file(row["mask"], base, f"{where}, column 'mask': mask", missing, skipped)
        if mask is None:
            return None
    label = _row_label(row, where, task, label_cols, names)
    patient = row.get("patient") or row.get("id") or row["path"]
    return part, Record(id=row.get("id") or row["path"], patient=patient, label=label, image=image, mask=mask,
                        where=where)


class CSVDataset(RecordDataset):
    """Images and labels listed in a CSV; see the module doc for the columns."""

    def __init__(self, root, split: str = "train", image_size=128, *, labels=None, task: str = "multilabel",
                 class_names=None, channels: int | None = None, mask_mode: str = "binary", instances: bool = False,
                 missing: str = "error", **common):
        if split not in SPLITS:
            raise ConfigError(f"csv: split must be one of {SPLITS}, got {split!r}")
        if task not in ("multilabel", "multiclass"):
            raise ConfigError(f"csv: task must be 'multilabel' or 'multiclass', got {task!r}")
        csv_path = find_csv(Path(root))
        columns, rows = read_table(csv_path, required=("path", *(labels or ())))
        label_cols = _label_columns(csv_path, columns, labels, task)
        names = _class_names(rows, label_cols, task, class_names)
        has_split = "split" in columns
        if split in ("val", "test") and not has_split:
            raise DataError(f"{csv_path}: split {split!r} needs a 'split' column (or use fold= for a patient-wise "
                            "train/val split)")
        if missing not in ("error", "skip"):
            raise ConfigError(f"csv: missing must be 'error' or 'skip', got {missing!r}")
        self.skipped: list[str] = []
        base = csv_path.parent
        by_split: dict[str, list[str]] = {}
        records = []
        for line, row in rows:
            parsed = _row_record(row, f"{csv_path.name} line {line}", base=base, has_split=has_split, task=task,
                                 label_cols=label_cols, names=names, missing=missing, skipped=self.skipped)
            if parsed is None:
                continue
            part, record = parsed
            by_split.setdefault(part, []).append(record.patient)
            if split == "all" or part == split:
                records.append(record)
        if has_split:
            check_disjoint(by_split, source=f"{csv_path}, column 'split'")
        nonempty(records, f"csv {csv_path}", split)
        if channels is None:
            arr, _ = read_image(records[0].image)
            channels = 1 if arr.shape[-1] == 1 else 3
        has_masks = "mask" in columns
        info = DatasetInfo(name="csv", class_names=names, task=task, in_channels=channels, has_masks=has_masks,
                           extra={"csv": str(csv_path), "mask_mode": mask_mode})
        super().__init__(records, info, root=base, image_size=image_size, channels=channels, split=split,
                         mask_mode=mask_mode, instances=instances, **common)
        self.with_mask_files = has_masks
