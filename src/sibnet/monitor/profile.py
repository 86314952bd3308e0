"""The reference profile of a monitored model: what it was fitted on, and its reference scores.

A profile is a JSON document (:meth:`Profile.to_json`) that records

* ``fingerprint``: sha256 of the model's state (:func:`model_fingerprint`: every entry of the
  state dict, in key order, with its dtype, shape and bytes), so that a profile loaded against
  another model (other weights, other BatchNorm statistics) is refused;
* the saliency ``method`` and its ``options``, ``embed_size``, ``radius``, ``threshold``;
* ``image_size`` (H, W) and ``channels`` of the images it was fitted on (scoring images of another
  size or channel count is refused), ``task`` and ``class_names``;
* ``sibnet_version``; ``source`` (free-form: checkpoint file and its sha256, dataset, split);
* ``reference``: the calibration images' scores, per score name;
* ``combine``: the location and scale that standardise ``cd`` and ``sc`` before their sum ``cd+sc``;
* ``gaussian``: the Mahalanobis means and precision matrix (float32, base64; a DenseNet-121's
  1024 features give about 5.6 MB of JSON).
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, SibnetError
from ..files import atomic_write_text

FORMAT = "sibnet-monitor-profile"
VERSION = 1


def model_fingerprint(model: nn.Module) -> str:
    """sha256 of the model's state dict (keys, dtypes, shapes and bytes, in key order)."""
    h = hashlib.sha256()
    state = model.module.state_dict() if hasattr(model, "module") and isinstance(model.module, nn.Module) \
        else model.state_dict()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous().reshape(-1)
        h.update(f"{key}|{t.dtype}|{tuple(state[key].shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of the bytes of the file at ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def encode_array(a: np.ndarray) -> dict:
    """A JSON-ready dict of ``a`` as float32: its ``shape``, ``dtype`` ("float32") and its C-order
    bytes in ``base64``; :func:`decode_array` reads it back."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    return {"shape": list(a.shape), "dtype": "float32", "base64": base64.b64encode(a.tobytes()).decode("ascii")}


def decode_array(d: dict) -> np.ndarray:
    """The float64 array of a dict written by :func:`encode_array`; SibnetError if it is malformed."""
    try:
        return np.frombuffer(base64.b64decode(d["base64"]), dtype=np.float32).reshape(d["shape"]).astype(np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise SibnetError(f"profile: malformed array ({exc})") from None


@dataclass
class Profile:
    """The reference profile of a monitored model, its fields as described in the module docstring;
    :meth:`save`/:meth:`load` write and read it as JSON."""

    fingerprint: str
    method: str
    options: dict
    embed_size: int | None
    radius: int
    threshold: object
    image_size: list
    channels: int
    task: str
    class_names: list
    reference: dict
    combine: dict
    gaussian: dict
    score: str
    n_fit: int
    n_calibration: int
    sibnet_version: str
    source: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ checks
    def check_model(self, model: nn.Module, where: str = "the model") -> None:
        """ConfigError unless ``model`` has this profile's fingerprint."""
        fp = model_fingerprint(model)
        if fp != self.fingerprint:
            origin = self.source.get("checkpoint") or "another model"
            raise ConfigError(f"the profile was fitted on {origin} (state sha256 {self.fingerprint[:12]}) but "
                              f"{where} has state sha256 {fp[:12]}: fit a profile for this model")

    def check_images(self, x: torch.Tensor, where: str = "images") -> None:
        """ConfigError unless ``x`` is (B, channels, H, W) with the profile's channels and size."""
        if not torch.is_tensor(x) or x.ndim != 4:
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ConfigError(f"{where}: expected a (B, C, H, W) tensor, got {shape}")
        c, h, w = (int(v) for v in x.shape[1:])
        want = (int(self.channels), *(int(v) for v in self.image_size))
        if (c, h, w) != want:
            raise ConfigError(f"{where} are {c}x{h}x{w} (channels x height x width) but the profile was fitted "
                              f"on {want[0]}x{want[1]}x{want[2]} images")

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        d = asdict(self)
        d["gaussian"] = {k: encode_array(v) for k, v in self.gaussian.items()}
        d["reference"] = {k: [float(v) for v in vals] for k, vals in self.reference.items()}
        return {"format": FORMAT, "version": VERSION, **d}

    def save(self, path: str | Path) -> Path:
        """Write the profile as JSON atomically (:func:`sibnet.files.atomic_write_text`)."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1, allow_nan=False), what="profile")

    @classmethod
    def from_dict(cls, d: dict, where: str = "profile") -> "Profile":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise SibnetError(f"{where}: not a sibnet monitor profile (no 'format: {FORMAT}' entry)")
        if d.get("version") != VERSION:
            raise SibnetError(f"{where}: profile version {d.get('version')!r} is not supported (this sibnet reads "
                              f"version {VERSION})")
        names = [f for f in cls.__dataclass_fields__]
        missing = [f for f in names if f not in d and f != "source"]
        if missing:
            raise SibnetError(f"{where}: profile lacks {', '.join(missing)}")
        kw = {f: d[f] for f in names if f in d}
        kw["gaussian"] = {k: decode_array(v) for k, v in d["gaussian"].items()}
        kw["reference"] = {k: np.asarray(v, dtype=np.float64) for k, v in d["reference"].items()}
        return cls(**kw)

    @classmethod
    def load(cls, path: str | Path) -> "Profile":
        path = Path(path)
        if not path.is_file():
            raise SibnetError(f"{path}: profile not found")
        try:
            d = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SibnetError(f"{path}: not a readable JSON profile ({exc})") from None
        return cls.from_dict(d, where=str(path))


__all__ = ["Profile", "decode_array", "encode_array", "file_sha256", "model_fingerprint"]
