"""Fit a reference profile on in-distribution images, score new images, check batches.

Functional core: :func:`fit` -> :class:`~sibnet.monitor.profile.Profile`; :func:`score` ->
per-image scores and conformal p-values; :func:`check` -> a batch verdict. :class:`Monitor`
wraps a model and its profile.

Fitting (``fit(model, data)``):

1. every reference image is scored (:func:`sibnet.monitor.scores.image_scores`);
2. the images are split at random (``seed``) into a FIT part (``fit_fraction``, default half) and a
   CALIBRATION part. The fit part estimates what the scores need (the Mahalanobis Gaussian, the
   standardisation of ``cd`` and ``sc`` for ``cd+sc``); the calibration part's scores are the
   reference that p-values and batch tests compare with. Calibration images take no part in the
   estimation, so a new image from the same distribution is exchangeable with them and its
   conformal p-value is uniform (an estimate fitted on the calibration images themselves would make
   them look closer than new images: e.g. a 512-dimensional covariance from 125 images).

``cd+sc``: ``(cd - median) / IQR + (sc - median) / IQR``, medians and interquartile ranges of the fit part.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .. import __version__
from ..errors import ConfigError
from ..saliency import check_options
from ..saliency import get as get_saliency
from .conformal import batch_test, p_values
from .profile import Profile, model_fingerprint
from .scores import SCORES, fit_gaussian, image_scores, mahalanobis_score

DEFAULT_METHOD = "gradcam"
#: the score a batch verdict uses unless another is chosen (see docs/results/monitor)
DEFAULT_SCORE = "mahalanobis"


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def batches(data, batch_size: int = 32) -> Iterable[dict]:
    """``{"image", "label" or None, "id" or None}`` batches from a (N, C, H, W) tensor, a dataset of
    item dicts, a DataLoader of dicts / ``(x, y)`` pairs / tensors, or any iterable of those."""
    if torch.is_tensor(data):
        for start in range(0, data.shape[0], batch_size):
            yield {"image": data[start:start + batch_size], "label": None, "id": None}
        return
    if isinstance(data, Dataset) and not isinstance(data, DataLoader):
        data = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=0)
    for b in data:
        if isinstance(b, dict):
            yield {"image": b["image"], "label": b.get("label"), "id": b.get("id")}
        elif isinstance(b, (tuple, list)):
            yield {"image": b[0], "label": b[1] if len(b) > 1 else None, "id": None}
        elif torch.is_tensor(b):
            yield {"image": b, "label": None, "id": None}
        else:
            raise ConfigError(f"monitor: cannot read images from a batch of type {type(b).__name__}")


def raw_scores(model: nn.Module, data, task: str, *, method=DEFAULT_METHOD, options=None, embed_size=32,
               radius=4, threshold="otsu", batch_size: int = 32, keep_maps: bool = False, check=None,
               progress=None) -> dict:
    """Concatenated :func:`image_scores` of every image of ``data`` (plus ``labels``, ``ids``,
    and ``maps`` with ``keep_maps``). ``check(x)`` is called on every batch before any work."""
    device = _device(model)
    parts: dict[str, list] = {}
    labels: list[np.ndarray | None] = []
    ids: list[str | None] = []
    for b in batches(data, batch_size):
        x = b["image"]
        if check is not None:
            check(x)
        s = image_scores(model, x.to(device).float(), task, method=method, options=options, embed_size=embed_size,
                         radius=radius, threshold=threshold)
        if not keep_maps:
            s.pop("maps")
        for k, v in s.items():
            parts.setdefault(k, []).append(v)
        labels.append(None if b["label"] is None else np.asarray(b["label"], dtype=np.float64))
        n = x.shape[0]
        ids.extend([str(i) for i in b["id"]] if b["id"] is not None else [None] * n)
        if progress is not None:
            progress(n)
    if not parts:
        raise ConfigError("monitor: no images to score")
    out: dict = {k: (torch.cat(v) if k == "maps" else np.concatenate(v)) for k, v in parts.items()}
    out["labels"] = (None if any(lab is None for lab in labels)
                     else np.concatenate([lab for lab in labels if lab is not None]))
    out["ids"] = ids
    return out


def _robust(v: np.ndarray) -> dict:
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    iqr = float(q3 - q1)
    return {"loc": float(med), "scale": iqr if iqr > 0 else float(np.std(v)) or 1.0}


def derived_scores(raw: dict, gaussian: dict, combine: dict) -> dict[str, np.ndarray]:
    """Every score of :data:`~sibnet.monitor.scores.SCORES` (N,) from :func:`raw_scores` output."""
    out = {k: np.asarray(raw[k], dtype=np.float64) for k in ("cd", "sc", "msp", "energy")}
    out["cd+sc"] = sum((out[k] - combine[k]["loc"]) / combine[k]["scale"] for k in ("cd", "sc"))
    out["mahalanobis"] = mahalanobis_score(raw["features"], gaussian)
    return {k: out[k] for k in SCORES}


def fit(model: nn.Module, data, *, method=DEFAULT_METHOD, options: dict | None = None, task: str = "multilabel",
        class_names=None, embed_size: int | None = 32, radius: int = 4, threshold="otsu",
        fit_fraction: float = 0.5, seed: int = 0, score: str = DEFAULT_SCORE, batch_size: int = 32,
        source: dict | None = None, progress=None) -> Profile:
    """A reference :class:`Profile` of ``model`` from in-distribution images ``data`` (see the module doc)."""
    name = method if isinstance(method, str) else None
    if name is None:
        raise ConfigError("monitor: the saliency method must be given by name (it is recorded in the profile)")
    get_saliency(name)
    check_options(name, options)
    if score not in SCORES:
        raise ConfigError(f"monitor: unknown score {score!r}; choose from {', '.join(SCORES)}")
    if not 0 < fit_fraction < 1:
        raise ConfigError(f"monitor: fit_fraction must be in (0, 1), got {fit_fraction!r}")
    shapes = set()
    raw = raw_scores(model, data, task, method=name, options=options, embed_size=embed_size, radius=radius,
                     threshold=threshold, batch_size=batch_size, check=lambda x: shapes.add(tuple(x.shape[1:])),
                     progress=progress)
    if len(shapes) != 1:
        raise ConfigError(f"monitor: the reference images have different shapes {sorted(shapes)}")
    c, h, w = shapes.pop()
    n = len(raw["msp"])
    n_fit = int(round(n * fit_fraction))
    if n_fit < 2 or n - n_fit < 2:
        raise ConfigError(f"monitor: {n} reference images are too few to fit and calibrate (need at least 4)")
    order = np.random.default_rng(seed).permutation(n)
    fit_idx, cal_idx = np.sort(order[:n_fit]), np.sort(order[n_fit:])
    labels = raw["labels"][fit_idx] if raw["labels"] is not None and task == "multiclass" else None
    gaussian = fit_gaussian(raw["features"][fit_idx], labels, task)
    combine = {k: _robust(np.asarray(raw[k])[fit_idx]) for k in ("cd", "sc")}
    all_scores = derived_scores(raw, gaussian, combine)
    reference = {k: v[cal_idx] for k, v in all_scores.items()}
    return Profile(fingerprint=model_fingerprint(model), method=name, options=dict(options or {}),
                   embed_size=embed_size, radius=radius, threshold=threshold, image_size=[h, w], channels=c,
                   task=task, class_names=list(class_names or []), reference=reference, combine=combine,
                   gaussian=gaussian, score=score, n_fit=int(n_fit), n_calibration=int(n - n_fit),
                   sibnet_version=__version__, source=dict(source or {}))


def score(model: nn.Module, profile: Profile, data, *, batch_size: int = 32, keep_maps: bool = False,
          progress=None, check_model: bool = True) -> dict:
    """``{"scores": {name: (N,)}, "p_values": {name: (N,)}, "logits", "labels", "ids"[, "maps"]}``
    of the images ``data`` against the profile (scores: higher = more suspicious)."""
    if check_model:
        profile.check_model(model)
    raw = raw_scores(model, data, profile.task, method=profile.method, options=profile.options,
                     embed_size=profile.embed_size, radius=profile.radius, threshold=profile.threshold,
                     batch_size=batch_size, keep_maps=keep_maps, check=profile.check_images, progress=progress)
    scores = derived_scores(raw, profile.gaussian, profile.combine)
    out = {"scores": scores, "p_values": {k: p_values(profile.reference[k], v) for k, v in scores.items()},
           "logits": raw["logits"], "labels": raw["labels"], "ids": raw["ids"]}
    if keep_maps:
        out["maps"] = raw["maps"]
    return out


def check(profile: Profile, scores: dict, *, alpha: float = 0.05, score_name: str | None = None) -> dict:
    """Batch verdict: :func:`~sibnet.monitor.conformal.batch_test` of the batch's ``score_name``
    scores (default the profile's) against the reference; ``"per_score"`` holds every score's test."""
    name = score_name or profile.score
    if name not in SCORES:
        raise ConfigError(f"monitor: unknown score {name!r}; choose from {', '.join(SCORES)}")
    per = {k: batch_test(profile.reference[k], v, alpha) for k, v in scores.items()}
    return {"score": name, "alpha": alpha, **per[name], "per_score": per}


class Monitor:
    """A model and its reference profile: ``Monitor.fit(model, val_data)``, then
    ``monitor.score(images)`` and ``monitor.check(images)``; ``save``/``load`` the profile."""

    def __init__(self, model: nn.Module, profile: Profile):
        profile.check_model(model)
        self.model, self.profile = model, profile

    @classmethod
    def fit(cls, model: nn.Module, data, **kwargs) -> "Monitor":
        return cls(model, fit(model, data, **kwargs))

    @classmethod
    def load(cls, path, model: nn.Module) -> "Monitor":
        return cls(model, Profile.load(path))

    def save(self, path):
        return self.profile.save(path)

    def score(self, images, **kwargs) -> dict:
        return score(self.model, self.profile, images, check_model=False, **kwargs)

    def check(self, images, alpha: float = 0.05, score_name: str | None = None) -> dict:
        return check(self.profile, self.score(images)["scores"], alpha=alpha, score_name=score_name)


__all__ = ["DEFAULT_METHOD", "DEFAULT_SCORE", "Monitor", "batches", "check", "derived_scores", "fit", "raw_scores",
           "score"]
