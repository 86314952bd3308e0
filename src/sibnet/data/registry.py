"""Datasets by name: ``build_dataset("nih", root=..., split="train", fold=0)``.

Names: ``synthetic``, ``synthetic-glands`` (generated, no files needed), ``chexpert``, ``nih``,
``glas``, ``busi``, ``medmnist``, ``csv``.

* Without ``fold``, ``split`` is one of the dataset's own splits (see each loader's doc; every
  file-based loader also has ``"all"``).
* With ``fold`` (0..folds-1), ``"train"`` and ``"val"`` are the patient-wise ``folds``-fold split
  (:func:`sibnet.data.splits.fold_split`, 80/20 for 5 folds, shuffled with ``seed``) of the
  dataset's training pool (its ``"train"`` split), and ``"test"`` is the dataset's official test split
  where one exists. A dataset with a ``fold_strata`` attribute (one class per item, e.g. ``busi``)
  gets folds stratified by it.
* With ``fold`` and ``held_out_test=True`` (datasets without an official test split, e.g. ``busi``;
  ``folds`` >= 3): ``"test"`` is fold ``fold``'s part of the training pool, ``"val"`` the part of fold
  ``fold + 1`` (mod ``folds``) and ``"train"`` the other ``folds - 2`` parts, so that early stopping on
  ``"val"`` never sees the images the model is tested on; the ``folds`` test parts partition the pool.
  The dataset's own test split, if any, is not used.
* ``cached=True`` wraps the result in :class:`sibnet.data.cache.CachedDataset` (``cache_dir``
  defaults to ``$SIBNET_CACHE`` or ``~/.cache/sibnet``).
* Any other keyword goes to the loader; one it does not take is a ConfigError naming it.

Every returned dataset has ``.info`` (:class:`~sibnet.data.base.DatasetInfo`) and ``.patients``.
"""

from __future__ import annotations

import importlib
import inspect

import numpy as np
from torch.utils.data import Dataset

from ..errors import ConfigError
from .cache import CachedDataset
from .splits import fold_split

_LOADERS = {
    "synthetic": ("sibnet.data.synthetic", "SyntheticChestXray"),
    "synthetic-glands": ("sibnet.data.synthetic_glands", "SyntheticGlands"),
    "chexpert": ("sibnet.data.chexpert", "CheXpert"),
    "nih": ("sibnet.data.nih", "NIHChestXray"),
    "glas": ("sibnet.data.glas", "GlaS"),
    "busi": ("sibnet.data.busi", "BUSI"),
    "medmnist": ("sibnet.data.medmnist", "MedMNIST"),
    "csv": ("sibnet.data.csv_dataset", "CSVDataset"),
}
_SYNTHETIC = ("synthetic", "synthetic-glands")
_COMMON = ("augment", "normalize")  # passed to RecordDataset by every file-based loader


def available() -> tuple[str, ...]:
    """Dataset names whose loader module can be imported."""
    out = []
    for name, (module, _) in _LOADERS.items():
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                continue
            raise
        out.append(name)
    return tuple(out)


def loader_class(name: str):
    if name not in _LOADERS:
        raise ConfigError(f"unknown dataset {name!r} (choose from {', '.join(_LOADERS)})")
    module, cls = _LOADERS[name]
    try:
        return getattr(importlib.import_module(module), cls)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            raise ConfigError(f"dataset {name!r} is not available in this installation ({module} missing)") from None
        raise


def _accepted(cls) -> tuple[set[str], bool]:
    params = inspect.signature(cls.__init__).parameters
    named = {p for p, v in params.items() if v.kind in (v.KEYWORD_ONLY, v.POSITIONAL_OR_KEYWORD)} - {"self"}
    var_kw = any(v.kind == v.VAR_KEYWORD for v in params.values())
    return named, var_kw


class SubsetDataset(Dataset):
    """A subset of a dataset that has no ``subset`` method, keeping ``.info`` and ``.patients``."""

    def __init__(self, dataset, indices, split: str):
        self.dataset, self.indices, self.split = dataset, [int(i) for i in indices], split
        self.info = dataset.info
        pats = list(dataset.patients)
        self.patients = [pats[i] for i in self.indices]

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.dataset[self.indices[i]]


def _ensure_patients(ds):
    """Give a dataset without ``.patients`` one, read from its items (each item has ``patient``)."""
    if not hasattr(ds, "patients"):
        ds.patients = [ds[i]["patient"] for i in range(len(ds))]
    return ds


def _subset(ds, indices, split):
    return ds.subset(indices, split=split) if hasattr(ds, "subset") else SubsetDataset(ds, indices, split)


def build_dataset(name: str, *, root=None, split: str = "train", image_size=128, fold: int | None = None,
                  folds: int = 5, seed: int = 0, held_out_test: bool = False, **options) -> Dataset:
    """The dataset ``name`` (see the module doc for ``split``, ``fold`` and the options)."""
    cls = loader_class(name)
    cache = options.pop("cached", False)
    cache_dir = options.pop("cache_dir", None)
    cache_workers = options.pop("cache_workers", 0)
    named, var_kw = _accepted(cls)
    synthetic = name in _SYNTHETIC
    allowed = named | (set() if synthetic else set(_COMMON))
    for key in options:
        if key not in allowed and not (synthetic and var_kw):
            extra = sorted(allowed - {"root", "split", "image_size", "size", "seed", "n"})
            raise ConfigError(f"dataset {name!r}: unknown option {key!r} (options: {', '.join(extra) or 'none'})")
    if not synthetic and root is None:
        raise ConfigError(f"dataset {name!r} needs root= (the dataset's folder or file)")
    kwargs = dict(options, root=root, seed=seed)
    kwargs.update({"size": image_size} if synthetic else {"image_size": image_size})

    def make(part: str):
        return cls(split=part, **kwargs)

    if fold is None:
        if (split == "val" and not synthetic
                and "val" not in getattr(importlib.import_module(cls.__module__), "SPLITS", ("val",))):
            raise ConfigError(f"dataset {name!r} has no official 'val' split; pass fold=0..{folds - 1} for a "
                              f"patient-wise {100 - 100 // folds}/{100 // folds} train/val split of its training pool")
        ds = make(split)
    else:
        if split not in ("train", "val", "test"):
            raise ConfigError(f"with fold given, split must be 'train', 'val' or 'test', got {split!r}")
        if split == "test" and not held_out_test:
            ds = make("test")
        else:
            ds = _fold_part(make("train"), split, fold, folds, seed, held_out_test)
    _ensure_patients(ds)
    if cache:
        ds = CachedDataset(ds, cache_dir, workers=cache_workers)
    return ds


def _fold_part(pool, split: str, fold: int, folds: int, seed: int, held_out_test: bool):
    """The ``split`` part of fold ``fold`` of the training ``pool`` (see the module doc)."""
    pool = _ensure_patients(pool)
    strata = getattr(pool, "fold_strata", None)

    def held_out(i: int):
        return fold_split(list(pool.patients), k=folds, fold=i, seed=seed,
                          strata=None if strata is None else list(strata))

    if not held_out_test:
        train_idx, val_idx = held_out(fold)
        return _subset(pool, train_idx if split == "train" else val_idx, split)
    if folds < 3:
        raise ConfigError(f"held_out_test needs folds >= 3 (train, validation and test parts), got {folds}")
    test_idx = held_out(fold)[1]
    val_idx = held_out((fold + 1) % folds)[1]
    parts = {"test": test_idx, "val": val_idx,
             "train": np.setdiff1d(np.arange(len(pool)), np.concatenate([test_idx, val_idx]))}
    return _subset(pool, parts[split], split)


__all__ = ["available", "build_dataset", "loader_class", "SubsetDataset"]
