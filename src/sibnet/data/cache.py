"""A preprocessed cache: every image decoded and resized once, then read from memory-mapped arrays.

Layout: ``<cache_dir>/<key>/<name>.npy`` for each array that ``dataset.load_arrays(i)`` returns
(``image.npy`` of shape (N, C, h, w), uint8 for 8-bit sources and float16 otherwise, and
``mask_map.npy`` (N, h, w) int32 when the dataset has mask files), plus ``meta.json``.

* ``cache_dir`` defaults to ``$SIBNET_CACHE`` or ``~/.cache/sibnet``; a cache directory inside the
  dataset's root is refused, so nothing is ever written into a dataset folder.
* ``key`` is a SHA-256 of what the arrays depend on (:meth:`RecordDataset.cache_key_parts`: dataset
  type, root, size, channels, and every file's path, size and modification time), so an edited,
  added or removed file gives a new cache.
* The cache is built in a temporary sibling folder and renamed into place when complete (an
  atomic rename); a crashed build leaves no half-written cache that could be read later.
* Items are ``dataset.make_item(i, arrays)`` on the cached arrays, so they are equal, byte for
  byte, to those of the uncached dataset (augmentation and normalisation are applied after).
* Works with DataLoader workers: the memory maps are opened lazily in each process and never
  pickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import uuid
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    env = os.environ.get("SIBNET_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sibnet"


def cache_key(dataset) -> str:
    parts = [CACHE_VERSION, *dataset.cache_key_parts()]
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.relative_to(parent)
        return True
    except ValueError:
        return False


class _Decode(Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return i, self.dataset.load_arrays(i)


def _identity(x):
    return x


def build_cache(dataset, path: Path, *, workers: int = 0, progress: bool = False) -> Path:
    """Decode every item of ``dataset`` into ``path`` (atomically); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        n = len(dataset)
        spec = dataset.array_keys()
        arrays = {k: np.lib.format.open_memmap(tmp / f"{k}.npy", mode="w+", dtype=dt, shape=(n, *shape))
                  for k, (shape, dt) in spec.items()}
        loader = DataLoader(_Decode(dataset), batch_size=None, shuffle=False, num_workers=workers,
                            collate_fn=_identity)
        it = loader
        if progress:
            from tqdm import tqdm

            it = tqdm(loader, total=n, desc="caching", unit="img", disable=not sys.stderr.isatty())
        for i, arrs in it:
            for k, v in arrs.items():
                arrays[k][i] = v
        for a in arrays.values():
            a.flush()
        del arrays
        meta = {"version": CACHE_VERSION, "n": n, "root": str(getattr(dataset, "root", None)),
                "arrays": {k: [list(s), np.dtype(d).str] for k, (s, d) in spec.items()}}
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            os.replace(tmp, path)
        except OSError:
            if not (path / "meta.json").is_file():  # neither ours nor a concurrent complete build
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


class CachedDataset(Dataset):
    """``dataset`` read from its preprocessed cache (built on first use; see the module doc)."""

    def __init__(self, dataset, cache_dir: str | Path | None = None, *, workers: int = 0,
                 progress: bool = False):
        for attr in ("load_arrays", "make_item", "cache_key_parts", "array_keys"):
            if not hasattr(dataset, attr):
                raise ConfigError(f"cache: {type(dataset).__name__} cannot be cached (it has no {attr}())")
        self.dataset = dataset
        base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        base = base.resolve()
        root = getattr(dataset, "root", None)
        if root is not None and _inside(base, Path(root).resolve()):
            raise ConfigError(f"cache_dir {base} is inside the dataset folder {root}; "
                              "choose a cache folder outside it (nothing is written into a dataset)")
        self.path = base / cache_key(dataset)
        self.built = False
        if not (self.path / "meta.json").is_file():
            build_cache(dataset, self.path, workers=workers, progress=progress)
            self.built = True
        self._arrays: dict | None = None

    def _open(self) -> dict:
        if self._arrays is None:
            meta = json.loads((self.path / "meta.json").read_text())
            self._arrays = {k: np.load(self.path / f"{k}.npy", mmap_mode="r") for k in meta["arrays"]}
        return self._arrays

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_arrays"] = None
        return state

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i = i % len(self)
        arrays = {k: np.asarray(v[i]) for k, v in self._open().items()}
        return self.dataset.make_item(i, arrays)

    def __getattr__(self, name):
        if name.startswith("_") or name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)
