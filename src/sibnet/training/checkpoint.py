"""Checkpoints: atomic writes, safe reads, and rebuilding a model from a checkpoint alone.

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

import contextlib
import os
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch
import torch.nn as nn

from .. import __version__
from ..errors import SibnetError
from ..models.classifier import build_classifier

FORMAT = "sibnet-checkpoint"
VERSION = 1
META_KEYS = ("model_name", "in_channels", "num_classes", "class_names", "task", "image_size")


PREVIOUS_SUFFIX = ".prev"  # last.pt's previous version is kept as last.prev.pt


def previous_path(path: str | Path) -> Path:
    """Where :func:`save_checkpoint` keeps the version of ``path`` it replaced (``last.prev.pt``)."""
    path = Path(path)
    return path.with_name(f"{path.stem}{PREVIOUS_SUFFIX}{path.suffix}")


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None], *, keep_previous: bool = False,
                 what: str = "file") -> Path:
    """Write ``path`` atomically: ``write(fh)`` into a temporary file in the same folder, fsync,
    then ``os.replace``; a reader never sees a half-written file and a crash (even SIGKILL) leaves
    the old one. ``keep_previous``: the replaced version stays as :func:`previous_path` (hard-linked
    before the swap, so ``path`` itself exists at every moment).

    Any OS failure (no space left, read-only folder, ...) is a one-line :class:`SibnetError` naming
    ``path``; the previous version is then left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        if keep_previous and path.is_file():
            prev, prev_tmp = previous_path(path), path.with_name(f".{previous_path(path).name}.tmp-{os.getpid()}")
            if prev_tmp.exists():
                prev_tmp.unlink()
            try:
                os.link(path, prev_tmp)
            except OSError:  # a filesystem without hard links
                shutil.copyfile(path, prev_tmp)
            os.replace(prev_tmp, prev)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch.save reports failed writes as RuntimeError
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else _first_line(str(exc))
        kept = " (the previous version is intact)" if path.is_file() else ""
        raise SibnetError(f"{path}: cannot write the {what}: {reason}{kept}") from None
    finally:
        for leftover in (tmp, path.with_name(f".{previous_path(path).name}.tmp-{os.getpid()}")):
            with contextlib.suppress(OSError):
                leftover.unlink()
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path


def remove_stale_temporaries(folder: str | Path) -> None:
    """Delete the temporary files of :func:`atomic_write` calls that a killed process left behind."""
    for leftover in Path(folder).glob(".*.tmp-*"):
        with contextlib.suppress(OSError):
            leftover.unlink()


def save_checkpoint(path: str | Path, payload: dict, keep_previous: bool = False) -> Path:
    """Write ``payload`` to ``path`` atomically (see :func:`atomic_write`); ``keep_previous``
    keeps the checkpoint it replaces as ``<name>.prev.pt``."""
    return atomic_write(path, lambda fh: torch.save(payload, fh), keep_previous=keep_previous, what="checkpoint")


def load_tensor_file(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with one-line :class:`SibnetError` messages.

    A file whose unpickling needs anything beyond tensors and plain Python containers is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise SibnetError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = _first_line(str(exc).split("WeightsUnpickler error:")[-1])
        raise SibnetError(f"{path}: refused to load: the file carries pickled Python objects, not only "
                          f"tensors and plain types ({detail}); it was not executed") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise SibnetError(f"{path}: not a readable torch file (truncated or corrupt?): "
                          f"{_first_line(str(exc))}") from None


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[0][:200] if lines else "unknown error"


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
