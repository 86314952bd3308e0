"""On-disk cache of generated synthetic splits.

A split is stored as a folder of ``.npy`` files (memory-mapped when read back), named after a
hash of every knob that changes its content. The folder is written under a temporary name and
renamed into place, so a reader never sees a half-written cache and two processes generating the
same split at once both end with one complete copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ConfigError

FORMAT_VERSION = 1
#: the generator's own source files: any change to how images are drawn gives a new cache key,
#: so a cache built by an older renderer is never served
_RENDERER_FILES = ("synthetic.py", "synthetic_glands.py", "synth_chest.py", "synth_fields.py", "synth_cache.py")


def _renderer_digest() -> str:
    here = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for name in _RENDERER_FILES:
        path = here / name
        if path.exists():
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


RENDERER_DIGEST = _renderer_digest()


def default_root() -> Path:
    """``$SIBNET_CACHE/synthetic`` if set, else ``~/.cache/sibnet/synthetic``."""
    env = os.environ.get("SIBNET_CACHE")
    if env:
        return Path(env).expanduser() / "synthetic"
    return Path.home() / ".cache" / "sibnet" / "synthetic"


def cache_key(kind: str, knobs: dict) -> str:
    """A readable, unique folder name: ``KIND-SPLIT-N-SIZE-HASH`` of the JSON of all knobs."""
    blob = json.dumps({"kind": kind, "version": FORMAT_VERSION, "renderer": RENDERER_DIGEST, **knobs},
                      sort_keys=True, default=str)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return f"{kind}-{knobs.get('split')}-n{knobs.get('n')}-s{knobs.get('size')}-{digest}"


def load_or_build(root, kind: str, knobs: dict, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Return the arrays of a split (read-only memory maps), generating them with ``build()``
    and storing them under ``root`` on first use (``root=None``: :func:`default_root`)."""
    root = default_root() if root is None else Path(root).expanduser()
    folder = root / cache_key(kind, knobs)
    if folder.is_dir() and (folder / "done").exists():
        return {p.stem: np.load(p, mmap_mode="r") for p in sorted(folder.glob("*.npy"))}
    arrays = build()
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=root))
    except OSError as exc:
        raise ConfigError(f"synthetic cache root {str(root)!r} is not writable: {exc.strerror}") from None
    try:
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(arr))
        (tmp / "done").write_text(json.dumps(knobs, sort_keys=True, default=str))
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "done").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return {p.stem: np.load(p, mmap_mode="r") for p in sorted(folder.glob("*.npy"))}


class MappedArrays:
    """Pickling support for datasets that hold memory-mapped cache arrays: a pickled dataset
    (e.g. sent to a spawned DataLoader worker) carries the file names, not the data."""

    def __getstate__(self):
        state = dict(self.__dict__)
        for name, value in state.items():
            if isinstance(value, np.memmap) and value.filename:
                state[name] = ("__npy__", value.filename)
        return state

    def __setstate__(self, state):
        for name, value in state.items():
            if isinstance(value, tuple) and len(value) == 2 and value[0] == "__npy__":
                state[name] = np.load(value[1], mmap_mode="r")
        self.__dict__.update(state)
