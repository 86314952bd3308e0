"""Datasets: real formats (CheXpert, NIH ChestX-ray14, GlaS, BUSI, MedMNIST, generic CSV), the generated
synthetic sets, patient-wise splits, transforms and the preprocessed cache.

Start with :func:`build_dataset` (``sibnet.data.registry``); every dataset follows the item
interface of :mod:`sibnet.data.base`.
"""

import importlib

from .base import DatasetInfo
from .busi import BUSI
from .cache import CachedDataset, default_cache_dir
from .chexpert import CheXpert
from .csv_dataset import CSVDataset
from .glas import GlaS
from .medmnist import MedMNIST
from .nih import NIHChestXray
from .records import Record, RecordDataset
from .registry import available, build_dataset
from .splits import check_disjoint, fold_split, patient_split
from .transforms import LightAugment, worker_init

_LAZY = {"SyntheticChestXray": "sibnet.data.synthetic", "SyntheticGlands": "sibnet.data.synthetic_glands"}


def __getattr__(name):  # the synthetic sets import lazily (they are heavier and optional here)
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sibnet.data' has no attribute {name!r}")


__all__ = ["BUSI", "DatasetInfo", "CachedDataset", "default_cache_dir", "CheXpert", "CSVDataset", "GlaS", "MedMNIST",
           "NIHChestXray", "Record", "RecordDataset", "available", "build_dataset", "check_disjoint", "fold_split",
           "patient_split", "LightAugment", "worker_init", *_LAZY]
