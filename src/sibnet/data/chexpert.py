"""CheXpert (Irvin et al., 2019) in its official layout, with the uncertainty-label policies.

``root`` is the release folder ``CheXpert-v1.0`` or ``CheXpert-v1.0-small`` (holding ``train.csv``,
``valid.csv``, ``train/``, ``valid/``) or a folder that contains one of them. The ``Path`` column
starts with the release folder's name (``CheXpert-v1.0-small/train/patient00001/study1/
view1_frontal.jpg``); that first component is replaced by the folder found, so a renamed copy works.

* ``split``: ``"train"`` (train.csv, the training pool), ``"valid"`` (valid.csv), ``"test"``
  (test.csv where present, otherwise valid.csv: the held-out set of the standard release), or
  ``"all"`` (train + valid). Train and valid are patient-disjoint; a shared patient is an error.
* ``labels``: the observations to use, default the 5 competition findings (Atelectasis,
  Cardiomegaly, Consolidation, Edema, Pleural Effusion), in that order.
* Values: ``1`` positive, ``0`` negative, ``-1`` uncertain, blank (not mentioned) -> 0
  (``blank="ignore"`` makes it ``nan``, a masked label). ``uncertainty`` sets what -1 becomes:
  ``"U-Ones"`` 1, ``"U-Zeros"`` 0, ``"U-Ignore"`` nan (masked in the loss), ``"U-Ones-LSR"`` and
  ``"U-Zeros-LSR"`` a value drawn uniformly from ``lsr_range`` (default (0.55, 0.85) and (0, 0.3),
  Pham et al. 2020), one draw per (row, observation) from ``numpy.random.default_rng(seed)``, so it
  is the same for the same seed; ``"keep"`` leaves -1. Default ``"U-Ones"``.
* ``missing="skip"`` leaves out rows whose image is missing (listed in ``.skipped``) instead of
  raising.
* ``frontal_only`` (default True) keeps rows whose ``Frontal/Lateral`` is ``Frontal``.
* ``patient`` is ``patientNNNNN`` taken from the path.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

import numpy as np

from ..errors import ConfigError, DataError
from .base import DatasetInfo
from .records import Record, RecordDataset, nonempty
from .splits import check_disjoint
from .tables import read_table

OBSERVATIONS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
                "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
                "Fracture", "Support Devices")
COMPETITION = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
POLICIES = {"u-ones": "ones", "u-zeros": "zeros", "u-ignore": "ignore", "u-ones-lsr": "ones-lsr",
            "u-zeros-lsr": "zeros-lsr", "keep": "keep"}
LSR_DEFAULT = {"ones-lsr": (0.55, 0.85), "zeros-lsr": (0.0, 0.3)}
SPLITS = ("train", "valid", "val", "test", "all")  # "val" is an alias of "valid"
_PATIENT = re.compile(r"(patient\d+)")
_VALUES = {"1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0, "-1": -1.0, "-1.0": -1.0}


def find_release(root: Path) -> Path:
    """The folder that holds ``train.csv`` / ``valid.csv``: ``root`` or a ``CheXpert-v1.0*`` inside it."""
    if (root / "train.csv").is_file() or (root / "valid.csv").is_file():
        return root
    for cand in sorted(root.glob("CheXpert-v1.0*")):
        if (cand / "train.csv").is_file() or (cand / "valid.csv").is_file():
            return cand
    raise DataError(f"{root}: no train.csv or valid.csv (in it or in a CheXpert-v1.0* folder inside it)")


def parse_policy(uncertainty: str) -> str:
    key = str(uncertainty).strip().lower().replace("_", "-")
    key = key if key.startswith("u-") or key == "keep" else "u-" + key
    if key not in POLICIES:
        raise ConfigError(f"chexpert: uncertainty must be one of U-Ones, U-Zeros, U-Ignore, U-Ones-LSR, "
                          f"U-Zeros-LSR, keep; got {uncertainty!r}")
    return POLICIES[key]


def apply_policy(raw: np.ndarray, policy: str, lsr_range=None, seed: int = 0) -> np.ndarray:
    """Map the -1 entries of ``raw`` (N, K) by ``policy`` (see the module doc); other values kept."""
    out = raw.astype(np.float32).copy()
    unc = raw == -1
    if policy == "ones":
        out[unc] = 1.0
    elif policy == "zeros":
        out[unc] = 0.0
    elif policy == "ignore":
        out[unc] = np.nan
    elif policy in LSR_DEFAULT:
        lo, hi = lsr_range if lsr_range is not None else LSR_DEFAULT[policy]
        if not 0.0 <= lo <= hi <= 1.0:
            raise ConfigError(f"chexpert: lsr_range must satisfy 0 <= low <= high <= 1, got {lsr_range!r}")
        draws = np.random.default_rng(int(seed)).uniform(lo, hi, size=raw.shape).astype(np.float32)
        out[unc] = draws[unc]
    elif policy != "keep":
        raise ConfigError(f"chexpert: unknown uncertainty policy {policy!r}")
    return out


def _resolve(release: Path, rel: str) -> Path:
    parts = PurePosixPath(rel.replace("\\", "/")).parts
    if parts and parts[0].startswith("CheXpert-v1.0"):
        parts = parts[1:]
    return release.joinpath(*parts)


def _read_split(release: Path, csv_name: str, labels, frontal_only: bool, blank: str, missing: str,
                skipped: list):
    path = release / csv_name
    _, rows = read_table(path, required=("Path", "Frontal/Lateral", *labels))
    out = []
    for line, row in rows:
        if frontal_only and row["Frontal/Lateral"] != "Frontal":
            continue
        raw = []
        for c in labels:
            v = row[c]
            if v == "":
                raw.append(np.nan if blank == "ignore" else 0.0)
            elif v in _VALUES:
                raw.append(_VALUES[v])
            else:
                raise DataError(f"{csv_name} line {line}, column {c!r}: unknown label value {v!r} "
                                "(expected 1, 0, -1 or blank)")
        m = _PATIENT.search(row["Path"])
        if m is None:
            raise DataError(f"{csv_name} line {line}, column 'Path': no patientNNNNN in {row['Path']!r}")
        image = _resolve(release, row["Path"])
        if not image.is_file():
            msg = f"{csv_name} line {line}, column 'Path': image {image} not found"
            if missing == "skip":
                skipped.append(msg)
                continue
            raise DataError(msg)
        out.append((line, row["Path"], m.group(1), np.array(raw, dtype=np.float32), image, csv_name))
    return out


class CheXpert(RecordDataset):
    """CheXpert; see the module doc for layout, splits, labels and policies."""

    def __init__(self, root, split: str = "train", image_size=128, *, labels=COMPETITION,
                 uncertainty: str = "U-Ones", lsr_range=None, frontal_only: bool = True, blank: str = "zeros",
                 missing: str = "error", channels: int = 1, seed: int = 0, **common):
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: CheXpert folder not found")
        if split not in SPLITS:
            raise ConfigError(f"chexpert: split must be one of {SPLITS}, got {split!r}")
        labels = tuple(labels)
        unknown = [c for c in labels if c not in OBSERVATIONS]
        if unknown or not labels:
            raise ConfigError(f"chexpert: unknown observation {unknown[0] if unknown else None!r} in labels "
                              f"(choose from {', '.join(OBSERVATIONS)})")
        if blank not in ("zeros", "ignore"):
            raise ConfigError(f"chexpert: blank must be 'zeros' or 'ignore', got {blank!r}")
        if missing not in ("error", "skip"):
            raise ConfigError(f"chexpert: missing must be 'error' or 'skip', got {missing!r}")
        policy = parse_policy(uncertainty)
        release = find_release(root)
        files = {"train": ["train.csv"], "valid": ["valid.csv"], "val": ["valid.csv"],
                 "all": ["train.csv", "valid.csv"],
                 "test": ["test.csv"] if (release / "test.csv").is_file() else ["valid.csv"]}[split]
        rows, self.skipped = [], []
        for f in files:
            if not (release / f).is_file():
                raise DataError(f"{release}: {f} not found (needed for split {split!r})")
            rows += _read_split(release, f, labels, frontal_only, blank, missing, self.skipped)
        other = "valid.csv" if files == ["train.csv"] else "train.csv" if files == ["valid.csv"] else None
        if other and (release / other).is_file():
            _, orows = read_table(release / other, required=("Path",))
            opats = [m.group(1) for _, r in orows if (m := _PATIENT.search(r["Path"]))]
            check_disjoint({files[0]: [r[2] for r in rows], other: opats}, source=str(release))
        nonempty(rows, f"chexpert {release}", split)
        raw = np.stack([r[3] for r in rows])
        values = apply_policy(raw, policy, lsr_range, seed)
        records = [Record(id=path_str, patient=pat, label=values[i], image=image, where=f"{csv} line {line}")
                   for i, (line, path_str, pat, _, image, csv) in enumerate(rows)]
        info = DatasetInfo(name="chexpert", class_names=labels, task="multilabel", in_channels=channels,
                           extra={"uncertainty": policy, "frontal_only": frontal_only, "release": str(release),
                                  "lsr_range": tuple(lsr_range or LSR_DEFAULT.get(policy, ())) or None})
        self.raw_labels = raw
        super().__init__(records, info, root=release, image_size=image_size, channels=channels, split=split,
                         seed=seed, **common)
