"""BUSI breast ultrasound (Al-Dhabyani et al., Data in Brief 28, 2020) with its expert lesion masks.

``root`` is one of two layouts (the first that matches):

* processed: ``labels.csv`` with columns ``image``, ``mask``, ``label`` (paths relative to ``root``;
  other columns such as ``original_file`` or ``lesion_masks`` are kept in the record's ``extra``);
  every image has one mask file, the union of its lesion masks;
* the original release (``Dataset_BUSI_with_GT``, also found one level down): folders ``benign/``,
  ``malignant/``, ``normal/`` holding ``benign (12).png`` and its masks ``benign (12)_mask.png``,
  ``benign (12)_mask_1.png``, ...; an image's masks are merged (union).

* Classes: ``classes=("benign", "malignant", "normal")`` (default), one-hot, task ``multiclass``.
  ``classes=["benign", "malignant"]`` (any two or three of them, in the order given) keeps only the
  images of those classes: benign vs malignant on the lesion images.
* Images are greyscale (``channels=1``; the release's few RGB files become their luminance).
* Masks: ``mask_mode="class"`` (default) gives ``mask`` (K, h, w) with the image's lesion mask in
  the channel of its class and zeros elsewhere (the per-class mask of the item interface: the
  saliency agreement compares the labelled class's map with the lesion). Normal images have an
  empty mask, so the agreement scores no pair for them. ``mask_mode="binary"`` gives (1, h, w).
* ``split``: ``"train"`` and ``"all"`` are every image; BUSI has no official test split, so use
  ``fold=`` (and ``split="val"``) for held-out images. ``n``: a random subset of ``n`` images
  (drawn with ``seed``), for quick runs.
* Folds are stratified by class (``fold_strata``) and grouped by ``patient``.
* ``patient``: BUSI publishes no patient identifiers (about 600 women, 780 images), so splits
  cannot be patient-wise. Instead near-duplicate images (the same scan cropped, annotated or
  exported twice) are grouped, and ``patient`` names the group (``group:<first image id>``), so
  that no near-duplicate pair straddles a train/val split. Two images are near-duplicates when the
  difference hashes of their whole images (256 bits: the signs of the horizontal differences of the
  image resized to 16 x 17 pixels with antialiasing) differ in at most ``duplicate_bits`` bits
  (default 48); groups are the connected components of that relation, computed over every image
  of the folder (before ``classes`` and ``n`` select). ``duplicate_bits=None`` makes every image its
  own group. Groups whose images carry different labels are listed in
  ``info.extra["conflicting_groups"]``.
* ``info.extra["burned_in_marks"]`` is true: ``sibnet evaluate`` reports by default how much of the
  saliency falls on the images' burned-in text and calipers (:mod:`sibnet.evaluation.marks`).
* Validation: a label outside benign/malignant/normal, a missing image or mask file, an image that
  cannot be decoded, and a mask whose size differs from its image's are each a
  :class:`~sibnet.errors.DataError` naming the file (and the ``labels.csv`` line).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from skimage.transform import resize

from ..errors import ConfigError, DataError
from .base import DatasetInfo
from .imageio import image_size as header_size
from .imageio import read_image
from .records import Record, RecordDataset, mask_files, nonempty
from .tables import read_table

CLASSES = ("benign", "malignant", "normal")
SPLITS = ("train", "all")
RELEASE_FOLDER = "Dataset_BUSI_with_GT"
HASH_SHAPE = (16, 17)  # rows, columns of the resized image: 16 x 16 = 256 difference bits
DUPLICATE_BITS = 48
MASK_NAME = re.compile(r"^(?P<stem>.+?)_mask(?:_(?P<k>\d+))?\.png$", re.IGNORECASE)
_NUMBER = re.compile(r"\((\d+)\)")
_HASHES: dict[tuple, tuple[np.ndarray, tuple[int, int]]] = {}  # (path, size, mtime) -> (bits, (h, w))


def difference_hash(grey: np.ndarray) -> np.ndarray:
    """256 bits (bool) of a (H, W) image: ``resized[:, 1:] > resized[:, :-1]`` at 16 x 17 pixels."""
    small = resize(np.asarray(grey, dtype=np.float64), HASH_SHAPE, anti_aliasing=True)
    return (small[:, 1:] > small[:, :-1]).ravel()


def _image_hash(path: Path) -> tuple[np.ndarray, tuple[int, int]]:
    """Difference hash and (height, width) of an image file (decoded once per process and file state)."""
    try:
        st = os.stat(path)
    except OSError:
        raise DataError(f"{path}: image file not found") from None
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        arr, hi = read_image(path, channels=1)
        _HASHES[key] = (difference_hash(arr[..., 0].astype(np.float64) / hi), arr.shape[:2])
    return _HASHES[key]


def near_duplicate_groups(hashes: np.ndarray, max_bits: int | None = DUPLICATE_BITS) -> np.ndarray:
    """Group index per image: connected components of 'hashes differ in at most ``max_bits`` bits'."""
    n = len(hashes)
    if max_bits is None or n == 0:
        return np.arange(n)
    h = np.asarray(hashes, dtype=np.uint8)
    dist = h.astype(np.int32) @ (1 - h.T).astype(np.int32)
    dist = dist + dist.T  # Hamming distance
    _, labels = connected_components(csr_matrix(dist <= int(max_bits)), directed=False)
    return labels


def _sort_key(name: str):
    m = _NUMBER.search(name)
    return (name[: m.start()] if m else name, int(m.group(1)) if m else -1, name)


def _processed_records(root: Path) -> list[Record]:
    table = root / "labels.csv"
    _, rows = read_table(table, required=("image", "mask", "label"))
    records = []
    for line, row in rows:
        where = f"{table.name} line {line}"
        label = row["label"]
        if label not in CLASSES:
            raise DataError(f"{table} line {line}, column 'label': unknown label value {label!r} "
                            f"(expected {', '.join(CLASSES)})")
        if not row["image"]:
            raise DataError(f"{table} line {line}, column 'image': empty")
        image = root / row["image"]
        if not image.is_file():
            raise DataError(f"{table} line {line}, column 'image': image {image} not found")
        if not row["mask"]:
            raise DataError(f"{table} line {line}, column 'mask': empty (every image needs its mask file)")
        mask = root / row["mask"]
        if not mask.is_file():
            raise DataError(f"{table} line {line}, column 'mask': mask {mask} not found")
        extra = {k: v for k, v in row.items() if k not in ("image", "mask", "label")}
        records.append(Record(id=Path(row["image"]).stem, patient="", label=np.asarray([label]), image=image,
                              mask=mask, where=where, extra=extra))
    return records


def _release_records(root: Path, classes) -> list[Record]:
    records = []
    for cls in CLASSES:
        folder = root / cls
        if not folder.is_dir():
            if cls in classes:
                raise DataError(f"{folder}: class folder not found (the release has benign/, malignant/, normal/)")
            continue
        names = sorted((e.name for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(".png")),
                       key=_sort_key)
        images = [n for n in names if not MASK_NAME.match(n)]
        masks: dict[str, list[tuple[int, str]]] = {}
        for n in names:
            m = MASK_NAME.match(n)
            if m:
                masks.setdefault(m.group("stem"), []).append((int(m.group("k") or 0), n))
        stems = {Path(n).stem for n in images}
        for stem, found in masks.items():
            if stem not in stems:
                raise DataError(f"{folder / found[0][1]}: mask without its image {folder / stem}.png")
        for n in images:
            stem = Path(n).stem
            if stem not in masks:
                raise DataError(f"{folder / n}: mask {folder / stem}_mask.png not found")
            files = tuple(folder / f for _, f in sorted(masks[stem]))
            records.append(Record(id=stem, patient="", label=np.asarray([cls]), image=folder / n,
                                  mask=files if len(files) > 1 else files[0], where=str(folder / n),
                                  extra={"original_file": n, "lesion_masks": len(files)}))
    return records


def _layout(root: Path) -> tuple[Path, str]:
    if (root / "labels.csv").is_file():
        return root, "processed"
    for cand in (root, root / RELEASE_FOLDER):
        if any((cand / c).is_dir() for c in CLASSES):
            return cand, "release"
    raise DataError(f"{root}: neither labels.csv nor the release's benign/, malignant/, normal/ folders found")


def _check_sizes(rec: Record, shape: tuple[int, int]) -> None:
    for path in mask_files(rec):
        h, w = header_size(path)
        if (h, w) != tuple(shape):
            raise DataError(f"{path}: mask is {w}x{h} (width x height) but its image {rec.image} is "
                            f"{shape[1]}x{shape[0]}")


def _check_options(split: str, classes, duplicate_bits, n) -> tuple[str, ...]:
    """Check the options of :class:`BUSI`; returns ``classes`` as a tuple."""
    if split not in SPLITS:
        raise ConfigError(f"busi: split must be one of {SPLITS}, got {split!r} (BUSI has no official test "
                          "split: pass fold= and split='val' for held-out images)")
    if isinstance(classes, str) or len(classes) < 2 or len(set(classes)) != len(classes) \
            or any(c not in CLASSES for c in classes):
        raise ConfigError(f"busi: classes must be two or three distinct names of {', '.join(CLASSES)}, "
                          f"got {classes!r}")
    if duplicate_bits is not None and (isinstance(duplicate_bits, bool) or not isinstance(duplicate_bits, int)
                                       or not 0 <= duplicate_bits <= 256):
        raise ConfigError(f"busi: duplicate_bits must be an integer in 0..256 or null, got {duplicate_bits!r}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ConfigError(f"busi: n must be a positive integer or null, got {n!r}")
    return tuple(classes)


def _hashes(records: list[Record]) -> np.ndarray:
    """Difference hashes (N, 256) of the records' images, each decoded once and checked against its mask(s)."""
    hashes = []
    for rec in records:
        bits, shape = _image_hash(rec.image)
        _check_sizes(rec, shape)
        hashes.append(bits)
    return np.stack(hashes)


def _name_groups(records: list[Record], groups: np.ndarray) -> dict[str, list[Record]]:
    """Set each record's ``patient`` to its group (``group:<first image id>``); returns the members of each."""
    first: dict[int, str] = {}
    for rec, g in zip(records, groups):
        rec.patient = "group:" + first.setdefault(int(g), rec.id)
    members: dict[str, list[Record]] = {}
    for rec in records:
        members.setdefault(rec.patient, []).append(rec)
    return members


def _select(records: list[Record], classes: tuple[str, ...], n: int | None, seed) -> list[Record]:
    """The records of ``classes``, their labels one-hot in that order; a random ``n`` of them (drawn with
    ``seed``, in their original order) when ``n`` is smaller."""
    kept = []
    for rec in records:
        name = str(rec.label[0])
        if name in classes:
            rec.label = np.array([name == c for c in classes], dtype=np.float32)
            kept.append(rec)
    if n is not None and n < len(kept):
        pick = np.sort(np.random.default_rng(int(seed)).choice(len(kept), size=n, replace=False))
        kept = [kept[int(i)] for i in pick]
    return kept


class BUSI(RecordDataset):
    """BUSI; see the module doc for layouts, classes, masks, splits and near-duplicate groups."""

    def __init__(self, root, split: str = "train", image_size=128, *, classes=CLASSES, mask_mode: str = "class",
                 n: int | None = None, duplicate_bits: int | None = DUPLICATE_BITS, seed: int = 0, **common):
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: BUSI folder not found")
        classes = _check_options(split, classes, duplicate_bits, n)
        root, layout = _layout(root)
        records = _processed_records(root) if layout == "processed" else _release_records(root, classes)
        nonempty(records, f"busi {root}", split)
        # every image decoded once: hash, size check against its mask(s), groups
        members = _name_groups(records, near_duplicate_groups(_hashes(records), duplicate_bits))
        conflicting = [[r.id for r in rs] for rs in members.values() if len({str(r.label[0]) for r in rs}) > 1]
        kept = _select(records, classes, n, seed)
        nonempty(kept, f"busi {root}", split)
        k = 1 if mask_mode == "binary" else len(classes)
        notes = []
        if conflicting:
            notes.append(f"{len(conflicting)} near-duplicate group(s) carry different labels: "
                         + "; ".join(", ".join(g) for g in conflicting))
        info = DatasetInfo(name="busi", class_names=classes, task="multiclass", in_channels=1, has_masks=True,
                           extra={"layout": layout, "burned_in_marks": True, "mask_mode": mask_mode, "mask_channels": k,
                                  "patient_groups": "near-duplicate groups (no patient ids)",
                                  "duplicate_bits": duplicate_bits, "near_duplicate_groups": len(members),
                                  "images_in_shared_groups": sum(len(rs) for rs in members.values() if len(rs) > 1),
                                  "conflicting_groups": conflicting, "notes": notes})
        super().__init__(kept, info, root=root, image_size=image_size, channels=1, split=split,
                         mask_mode=mask_mode, seed=seed, **common)

    @property
    def fold_strata(self) -> list[int]:
        """The class index of every image: folds are stratified by it."""
        return [int(np.argmax(r.label)) for r in self.records]
