"""Checkpoints: atomic saves (:func:`sibnet.files.atomic_write`), safe reads
(:func:`sibnet.files.load_tensor_file`), and rebuilding a model from a checkpoint alone.

A checkpoint is a dict of tensors and plain Python types (dict, list, tuple, str, int, float,
bool, None); it is always read with ``torch.load(weights_only=True)``, so a file that carries
pickled Python objects (whose unpickling could run code) is refused, never executed.

Layout written by :mod:`sibnet.training.loop`::

    format      "sibnet-checkpoint"
    version     1
    model       state dict of the bare model (no DDP ``module.`` prefix)
    meta        model_name, in_channels, num_classes, class_names, task, image_size,
                normalisation (dict or None), dataset, saliency, sibnet_version
    optimizer, scheduler, scaler   state dicts (scheduler/scaler may be None)
    rng         list, one :func:`sibnet.training.rng.capture_rng` state per rank
    state       the loop's :class:`~sibnet.training.loop.TrainState` as a dict
    config      the run's configuration as a plain dict
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .. import __version__
from ..errors import SibnetError
from ..files import atomic_write, load_tensor_file
from ..models.classifier import build_classifier

FORMAT = "sibnet-checkpoint"
VERSION = 1
META_KEYS = ("model_name", "in_channels", "num_classes", "class_names", "task", "image_size")


def save_checkpoint(path: str | Path, payload: dict, keep_previous: bool = False) -> Path:
    """Write ``payload`` to ``path`` atomically (see :func:`sibnet.files.atomic_write`); ``keep_previous``
    keeps the checkpoint it replaces as ``<name>.prev.pt``."""
    return atomic_write(path, lambda fh: torch.save(payload, fh), keep_previous=keep_previous, what="checkpoint")


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (format and version checked)."""
    ckpt = load_tensor_file(path, map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise SibnetError(f"{path}: not a sibnet checkpoint (no 'format: {FORMAT}' entry); for a bare "
                          "state dict of ImageNet weights use --pretrained")
    if ckpt.get("version") != VERSION:
        raise SibnetError(f"{path}: checkpoint version {ckpt.get('version')!r} is not supported "
                          f"(this sibnet reads version {VERSION})")
    missing = [k for k in ("model", "meta") if k not in ckpt]
    if missing:
        raise SibnetError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return ckpt


def model_meta(*, model_name: str, info, image_size: int, normalisation: dict | None = None,
               dataset: str = "", saliency: str | None = None) -> dict:
    """The ``meta`` entry: what is needed to rebuild and use the model without the training config."""
    return {
        "model_name": model_name,
        "in_channels": int(info.in_channels),
        "num_classes": int(info.num_classes),
        "class_names": [str(c) for c in info.class_names],
        "task": str(info.task),
        "image_size": int(image_size),
        "normalisation": normalisation,
        "dataset": dataset or info.name,
        "saliency": saliency,
        "sibnet_version": __version__,
    }


def load_model_from_checkpoint(path: str | Path, map_location: Any = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the classifier stored in a checkpoint; returns ``(model in eval mode, meta)``."""
    ckpt = load_checkpoint(path, map_location)
    meta = ckpt["meta"]
    absent = [k for k in META_KEYS if k not in meta]
    if absent:
        raise SibnetError(f"{path}: checkpoint meta lacks {', '.join(absent)}")
    try:
        model = build_classifier(meta["model_name"], meta["in_channels"], meta["num_classes"])
    except SibnetError as exc:
        raise SibnetError(f"{path}: {exc}") from None
    try:
        result = model.load_state_dict(ckpt["model"], strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise SibnetError(f"{path}: model weights do not fit {meta['model_name']}: "
                          f"{' '.join(str(exc).split())[:300]}") from None
    if result.missing_keys or result.unexpected_keys:
        raise SibnetError(f"{path}: model weights do not fit {meta['model_name']}: missing "
                          f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    model.eval()
    return model, dict(meta)
