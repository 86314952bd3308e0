"""Patient-wise splits: k-fold train/val (the paper's 5-fold 80/20) and train/val/test.

All functions take ``patients``, the patient id of every item (a sequence of str), and return
sorted integer index arrays into it. No patient ever has items on two sides. Results depend only
on the arguments (``seed`` included), not on global random state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

from ..errors import ConfigError, DataError


def fold_split(patients: Sequence[str], k: int = 5, fold: int = 0, seed: int = 0,
               strata: Sequence | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(train_idx, val_idx)`` of fold ``fold`` of a patient-wise k-fold split.

    Patients are shuffled with ``seed`` and dealt into ``k`` groups (scikit-learn's
    ``GroupKFold(shuffle=True)``); fold ``i`` validates on group ``i``, so with ``k=5`` about 80 %
    of the items train and 20 % validate, and the ``k`` validation sets partition the items.
    With ``strata`` (one class per item), the groups are dealt so that each fold keeps the
    classes' proportions as far as the patients allow (``StratifiedGroupKFold(shuffle=True)``);
    patients still never straddle folds.
    """
    if not isinstance(k, int) or k < 2:
        raise ConfigError(f"folds must be an integer >= 2, got {k!r}")
    if not isinstance(fold, int) or not 0 <= fold < k:
        raise ConfigError(f"fold must be an integer in 0..{k - 1}, got {fold!r}")
    groups = np.asarray([str(p) for p in patients])
    n_patients = len(np.unique(groups))
    if n_patients < k:
        raise DataError(f"cannot make {k} patient-wise folds from {n_patients} patient(s)")
    if strata is None:
        splitter, y = GroupKFold(n_splits=k, shuffle=True, random_state=int(seed)), None
    else:
        y = np.asarray([str(c) for c in strata])
        if y.shape != groups.shape:
            raise ConfigError(f"strata has {len(y)} entries but there are {len(groups)} items")
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=int(seed))
    for i, (tr, va) in enumerate(splitter.split(np.zeros(len(groups)), y, groups=groups)):
        if i == fold:
            return np.sort(tr), np.sort(va)
    raise AssertionError("unreachable")


def patient_split(patients: Sequence[str], fractions: Sequence[float] = (0.7, 0.1, 0.2),
                  seed: int = 0) -> tuple[np.ndarray, ...]:
    """Patient-wise split into ``len(fractions)`` parts (default train/val/test 70/10/20).

    Patients are shuffled with ``seed`` and taken in that order; each part receives patients
    until its share of the *items* reaches its fraction (the last part takes the rest).
    """
    fr = np.asarray(fractions, dtype=float)
    if fr.ndim != 1 or len(fr) < 2 or np.any(fr < 0) or not np.isclose(fr.sum(), 1.0):
        raise ConfigError(f"fractions must be >= 2 non-negative numbers summing to 1, got {tuple(fractions)}")
    groups = np.asarray([str(p) for p in patients])
    uniq, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    order = np.random.default_rng(int(seed)).permutation(len(uniq))
    bounds = np.cumsum(fr)[:-1] * len(groups)
    part_of = np.empty(len(uniq), dtype=int)
    seen, part = 0, 0
    for p in order:
        while part < len(bounds) and seen >= bounds[part] - 1e-9:
            part += 1
        part_of[p] = part
        seen += counts[p]
    item_part = part_of[inverse]
    return tuple(np.flatnonzero(item_part == j) for j in range(len(fr)))


def check_disjoint(split_patients: Mapping[str, Sequence[str]], source: str = "") -> None:
    """DataError naming the first patient that appears in two of the named splits."""
    owner: dict[str, str] = {}
    for split, pats in split_patients.items():
        for p in dict.fromkeys(str(x) for x in pats):
            other = owner.setdefault(p, split)
            if other != split:
                where = f"{source}: " if source else ""
                raise DataError(f"{where}patient {p!r} appears in both the {other!r} and the {split!r} split")
