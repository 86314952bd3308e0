"""Atomic file writes: a reader never sees a half-written file, and a crash leaves the old one; safe
reads of torch files.

Every file that must survive a crash (checkpoints, ``metrics.csv``, job records, evaluation
caches, tables, monitor profiles) is written through :func:`atomic_write`: the content goes to a
temporary file ``.<name>.tmp-<pid>`` in the same folder, is fsynced, then ``os.replace``-d over
the target, and the folder is fsynced so that the rename itself is durable.

Torch files (checkpoints, pretrained weights) are read through :func:`load_tensor_file`:
``torch.load(weights_only=True)``, so a file that carries pickled Python objects is refused, never
executed.
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

from .errors import SibnetError, first_line

PREVIOUS_SUFFIX = ".prev"  # last.pt's previous version is kept as last.prev.pt


def previous_path(path: str | Path) -> Path:
    """Where :func:`atomic_write` keeps the version of ``path`` it replaced (``last.prev.pt``)."""
    path = Path(path)
    return path.with_name(f"{path.stem}{PREVIOUS_SUFFIX}{path.suffix}")


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None], *, keep_previous: bool = False,
                 what: str = "file") -> Path:
    """Write ``path`` atomically: ``write(fh)`` into a temporary file in the same folder, fsync,
    then ``os.replace``; a reader never sees a half-written file and a crash (even SIGKILL) leaves
    the old one. ``keep_previous``: the replaced version stays as :func:`previous_path` (hard-linked
    before the swap, so ``path`` itself exists at every moment). The folder is created if needed.

    Any OS failure (no space left, read-only folder, ...) is a one-line :class:`SibnetError` naming
    ``path`` and ``what`` was written; the previous version is then left as it was.
    """
    path = Path(path)
    tmp, prev_tmp = _temporary(path), _temporary(previous_path(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        if keep_previous and path.is_file():
            if prev_tmp.exists():
                prev_tmp.unlink()
            try:
                os.link(path, prev_tmp)
            except OSError:  # a filesystem without hard links
                shutil.copyfile(path, prev_tmp)
            os.replace(prev_tmp, previous_path(path))
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch.save reports failed writes as RuntimeError
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else first_line(str(exc))
        kept = " (the previous version is intact)" if path.is_file() else ""
        raise SibnetError(f"{path}: cannot write the {what}: {reason}{kept}") from None
    finally:
        for leftover in (tmp, prev_tmp):
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


def atomic_write_text(path: str | Path, text: str | bytes, *, what: str = "file") -> Path:
    """:func:`atomic_write` of a text (UTF-8) or of bytes."""
    data = text if isinstance(text, bytes) else text.encode("utf-8")
    return atomic_write(path, lambda fh: fh.write(data), what=what)


def remove_stale_temporaries(folder: str | Path) -> None:
    """Delete the temporary files of :func:`atomic_write` calls that a killed process left behind."""
    for leftover in Path(folder).glob(".*.tmp-*"):
        with contextlib.suppress(OSError):
            leftover.unlink()


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
        detail = first_line(str(exc).split("WeightsUnpickler error:")[-1])
        raise SibnetError(f"{path}: refused to load: the file carries pickled Python objects, not only "
                          f"tensors and plain types ({detail}); it was not executed") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise SibnetError(f"{path}: not a readable torch file (truncated or corrupt?): "
                          f"{first_line(str(exc))}") from None


__all__ = ["PREVIOUS_SUFFIX", "atomic_write", "atomic_write_text", "load_tensor_file", "previous_path",
           "remove_stale_temporaries"]
