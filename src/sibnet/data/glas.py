"""GlaS gland segmentation (MICCAI 2015, Warwick-QU) in its official release layout.

``root`` holds ``<split>_<n>.bmp`` (or ``.png``) images, ``<split>_<n>_anno.bmp|png`` instance label
maps (0 background, 1..n glands) and ``Grade.csv`` (header ``name,patient ID, grade (GlaS),
grade (Sirinukunwattana et al. 2015)``, old-Mac CR-only line endings, leading spaces in names and
values; all accepted as they are).

* ``split``: ``"train"``, ``"testA"``, ``"testB"`` (names starting with ``train_``, ``testA_``,
  ``testB_``), ``"test"`` (testA and testB together) or ``"all"``. The official splits share
  patients by design (sections of the same 16 patients); patient-wise folds are made inside the
  training split only.
* Labels: ``benign`` / ``malignant`` from the `` grade (GlaS)`` column, one-hot, task ``multiclass``.
* Masks: ``mask_mode="binary"`` (default) gives ``mask`` (1, h, w) = glands; ``"class"`` gives
  (2, h, w) with the glands in the channel of the image's grade. ``instances=True`` adds
  ``instances`` (h, w) int64, the gland instance map resized with nearest neighbour.
* ``patient`` is ``patient ID`` from ``Grade.csv``; images are RGB (``channels=3``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from .base import DatasetInfo
from .records import Record, RecordDataset, nonempty
from .tables import read_table

CLASSES = ("benign", "malignant")
GRADE_COLUMN = "grade (GlaS)"
SPLITS = ("train", "testA", "testB", "test", "all")
SUFFIXES = (".bmp", ".png")


def _split_of(name: str) -> str | None:
    for s in ("train", "testA", "testB"):
        if name.startswith(s + "_"):
            return s
    return None


def _find_file(root: Path, stem: str) -> Path | None:
    for suf in SUFFIXES:
        for cand in (root / f"{stem}{suf}", root / f"{stem}{suf.upper()}"):
            if cand.is_file():
                return cand
    return None


class GlaS(RecordDataset):
    """GlaS; see the module doc for layout, splits, labels and masks."""

    def __init__(self, root, split: str = "train", image_size=128, *, channels: int = 3, mask_mode: str = "binary",
                 instances: bool = False, **common):
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: GlaS folder not found")
        if split not in SPLITS:
            raise ConfigError(f"glas: split must be one of {SPLITS}, got {split!r}")
        grade_csv = root / "Grade.csv"
        _, rows = read_table(grade_csv, required=("name", "patient ID", GRADE_COLUMN))
        wanted = {"test": ("testA", "testB"), "all": ("train", "testA", "testB")}.get(split, (split,))
        records = []
        for line, row in rows:
            name = row["name"]
            part = _split_of(name)
            if part is None:
                raise DataError(f"{grade_csv.name} line {line}, column 'name': {name!r} does not start with "
                                "train_, testA_ or testB_")
            if part not in wanted:
                continue
            grade = row[GRADE_COLUMN].lower()
            if grade not in CLASSES:
                raise DataError(f"{grade_csv.name} line {line}, column ' {GRADE_COLUMN}': unknown label value "
                                f"{row[GRADE_COLUMN]!r} (expected benign or malignant)")
            image = _find_file(root, name)
            if image is None:
                raise DataError(f"{grade_csv.name} line {line}: image {root / name}.bmp (or .png) not found")
            mask = _find_file(root, f"{name}_anno")
            if mask is None:
                raise DataError(f"{grade_csv.name} line {line}: mask {root / name}_anno.bmp (or .png) not found")
            label = np.array([grade == c for c in CLASSES], dtype=np.float32)
            records.append(Record(id=name, patient=row["patient ID"], label=label, image=image, mask=mask,
                                  where=f"{grade_csv.name} line {line}",
                                  extra={"grade_detail": row.get("grade (Sirinukunwattana et al. 2015)", "")}))
        nonempty(records, f"glas {root}", split)
        k = 1 if mask_mode == "binary" else len(CLASSES)
        info = DatasetInfo(name="glas", class_names=CLASSES, task="multiclass", in_channels=channels,
                           has_masks=True, extra={"mask_mode": mask_mode, "mask_channels": k,
                                                  "instances": bool(instances)})
        super().__init__(records, info, root=root, image_size=image_size, channels=channels, split=split,
                         mask_mode=mask_mode, instances=instances, **common)
