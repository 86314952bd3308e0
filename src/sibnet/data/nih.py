"""NIH ChestX-ray14 (Wang et al., CVPR 2017) in its official release layout.

Files looked for under ``root`` and ``root/metadata`` (first found wins):
``Data_Entry_2017_v2020.csv``, ``Data_Entry_2017.csv`` (or the same ``.gz``), ``train_val_list.txt``,
``test_list.txt``, ``BBox_List_2017.csv``. Images: ``root/images/*.png`` or the release's
``root/images_001/images/...`` folders. Only label rows whose image exists are used (a partial
download is normal).

* ``split``: ``"train"`` = images of ``train_val_list.txt`` (the training pool), ``"test"`` = those of
  ``test_list.txt``, ``"all"`` = every image; without the lists everything is ``"train"``. The two
  official lists are patient-disjoint; a patient in both is an error.
* ``label_set="nih14"``: the 14 findings in NIH's order; ``"chexpert5"``: Atelectasis, Cardiomegaly,
  Consolidation, Edema, Pleural Effusion (NIH's ``Effusion``), the CheXpert competition findings.
  ``No Finding`` is all zeros. Labels are 1/0 (NIH has no uncertain labels).
* Boxes (``BBox_List_2017.csv``, x, y, w, h in the 1024 x 1024 pixels of the released PNGs, not in
  the ``OriginalImage[Width,Height]`` frame of the source DICOM) become masks ``(K, h, w)`` scaled
  by ``h/1024``, ``w/1024``: pixel (r, c) is inside when its centre (r + 0.5, c + 0.5) lies in the
  scaled box. The boxes' ``Infiltrate`` is the labels' ``Infiltration``.
* ``patient`` is the ``Patient ID`` column.
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .base import DatasetInfo
from .records import Record, RecordDataset, nonempty
from .splits import check_disjoint
from .tables import first_existing, read_list, read_table

NIH14 = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
         "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia")
CHEXPERT5 = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
NIH_TO_CHEXPERT = {"Effusion": "Pleural Effusion"}
BOX_ALIASES = {"Infiltrate": "Infiltration"}
NO_FINDING = "No Finding"
BOX_FRAME = 1024.0
ENTRY_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017_v2020.csv.gz", "Data_Entry_2017.csv",
               "Data_Entry_2017.csv.gz")
SPLITS = ("train", "test", "all")


def _find(root: Path, names) -> Path | None:
    return first_existing(*[d / n for d in (root, root / "metadata") for n in names])


def find_images(root: Path) -> dict[str, Path]:
    """File name -> path of every ``.png`` in ``images/``, ``images_*/images/``, ``images_*/``."""
    found: dict[str, Path] = {}
    dirs = [root / "images", *sorted(root.glob("images_*/images")), *sorted(root.glob("images_*"))]
    for d in dirs:
        if d.is_dir():
            with os.scandir(d) as it:
                for e in it:
                    if e.name.lower().endswith(".png") and e.name not in found:
                        found[e.name] = Path(e.path)
    return found


def read_boxes(path: Path) -> dict[str, list[tuple[str, float, float, float, float]]]:
    """Image name -> [(finding, x, y, w, h)] from ``BBox_List_2017.csv`` (1024-pixel frame)."""
    boxes: dict[str, list] = defaultdict(list)
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        if len(header) < 3 or header[0].strip() != "Image Index":
            raise DataError(f"{path}: missing column 'Image Index' (not a BBox_List_2017.csv)")
        for values in reader:
            if not values or not values[0].strip():
                continue
            try:
                x, y, w, h = (float(v) for v in values[2:6])
            except ValueError:
                raise DataError(f"{path} line {reader.line_num}: box values {values[2:6]} are not numbers") from None
            name = values[1].strip()
            boxes[values[0].strip()].append((BOX_ALIASES.get(name, name), x, y, w, h))
    return dict(boxes)


def box_mask(boxes, class_names, size: tuple[int, int], frame: float = BOX_FRAME) -> np.ndarray:
    """``(K, h, w)`` float32: 1 inside each class's boxes (scaled from the ``frame`` px square)."""
    h, w = size
    out = np.zeros((len(class_names), h, w), dtype=np.float32)
    rows = np.arange(h) + 0.5
    cols = np.arange(w) + 0.5
    for finding, x, y, bw, bh in boxes:
        if finding not in class_names:
            continue
        sy, sx = h / frame, w / frame
        r = (rows >= y * sy) & (rows < (y + bh) * sy)
        c = (cols >= x * sx) & (cols < (x + bw) * sx)
        out[class_names.index(finding)][np.ix_(r, c)] = 1.0
    return out


class NIHChestXray(RecordDataset):
    """NIH ChestX-ray14; see the module doc for files, splits, labels and boxes."""

    def __init__(self, root, split: str = "train", image_size=128, *, label_set: str = "nih14",
                 boxes: bool = True, labels_csv=None, channels: int = 1, **common):
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: NIH ChestX-ray14 folder not found")
        if split not in SPLITS:
            raise ConfigError(f"nih: split must be one of {SPLITS}, got {split!r}")
        if label_set == "nih14":
            names = NIH14
        elif label_set == "chexpert5":
            names = CHEXPERT5
        else:
            raise ConfigError(f"nih: label_set must be 'nih14' or 'chexpert5', got {label_set!r}")
        entry = Path(labels_csv) if labels_csv else _find(root, ENTRY_NAMES)
        if entry is None:
            raise DataError(f"{root}: no Data_Entry_2017_v2020.csv or Data_Entry_2017.csv (in it or in metadata/)")
        _, rows = read_table(entry, required=("Image Index", "Finding Labels", "Patient ID"))
        images = find_images(root)
        known = set(NIH14) | {NO_FINDING}
        self.missing_rows = 0
        records: list[Record] = []
        for line, row in rows:
            name = row["Image Index"]
            path = images.get(name)
            if path is None:
                self.missing_rows += 1
                continue
            findings = [f.strip() for f in row["Finding Labels"].split("|") if f.strip()]
            bad = [f for f in findings if f not in known]
            if bad or not findings:
                raise DataError(f"{entry.name} line {line}, column 'Finding Labels': unknown label value "
                                f"{(bad or [''])[0]!r} (expected findings of {', '.join(NIH14)} or {NO_FINDING!r})")
            if label_set == "chexpert5":
                findings = [NIH_TO_CHEXPERT.get(f, f) for f in findings]
            label = np.array([1.0 if c in findings else 0.0 for c in names], dtype=np.float32)
            if not row["Patient ID"]:
                raise DataError(f"{entry.name} line {line}, column 'Patient ID': empty")
            records.append(Record(id=name, patient=row["Patient ID"], label=label, image=path,
                                  where=f"{entry.name} line {line}"))
        self.entry_csv = entry
        # official splits
        tv, te = _find(root, ("train_val_list.txt",)), _find(root, ("test_list.txt",))
        self.has_official_splits = tv is not None and te is not None
        if self.has_official_splits:
            train_names, test_names = set(read_list(tv)), set(read_list(te))
            check_disjoint({"train": [r.patient for r in records if r.id in train_names],
                            "test": [r.patient for r in records if r.id in test_names]}, source=f"{tv.name}/{te.name}")
            chosen = {"train": train_names, "test": test_names}.get(split)
            if chosen is not None:
                records = [r for r in records if r.id in chosen]
        elif split == "test":
            raise DataError(f"{root}: split 'test' needs train_val_list.txt and test_list.txt (in it or in metadata/)")
        nonempty(records, f"nih {root}", split)
        bbox = _find(root, ("BBox_List_2017.csv",)) if boxes else None
        self.boxes = read_boxes(bbox) if bbox is not None else {}
        info = DatasetInfo(name="nih", class_names=names, task="multilabel", in_channels=channels,
                           has_masks=bbox is not None,
                           extra={"label_set": label_set, "labels_csv": str(entry),
                                  "boxes": str(bbox) if bbox else None, "rows_without_image": self.missing_rows})
        super().__init__(records, info, root=root, image_size=image_size, channels=channels, split=split, **common)

    def masks(self, i, arrays):
        if not self.info.has_masks:
            return {}
        rec = self.records[i]
        boxes = self.boxes.get(rec.id, [])
        if self.info.extra["label_set"] == "chexpert5":
            boxes = [(NIH_TO_CHEXPERT.get(f, f), *xywh) for f, *xywh in boxes]
        m = box_mask(boxes, self.info.class_names, self.image_size)
        return {"mask": torch.from_numpy(m)}
