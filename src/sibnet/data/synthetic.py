"""SyntheticChestXray: an embedded chest-radiograph dataset with pixel masks of every finding.

Why: no public chest X-ray set here ships pixel-level ground truth, yet saliency agreement,
shortcut learning and the SIBNet losses need it. These images are drawn from a small anatomical
model (see :mod:`sibnet.data.synth_chest`) with the five CheXpert competition findings.

Conventions
-----------
* Splits ``train``/``val``/``test``/``unlabeled`` (default sizes 1000/250/250/1000). Image ``i``
  of a split is a pure function of ``(seed, split, i)`` and the knobs: labels, patient anatomy,
  acquisition, findings and noise each come from their own random stream of that key.
* Findings co-occur through a Gaussian copula: a correlated normal vector (``CORRELATION``,
  e.g. Edema with Cardiomegaly and Pleural Effusion) is thresholded so that each finding's
  marginal prevalence is exactly ``prevalence[name]`` in expectation.
* ``prevalence``: ``None`` (``DEFAULT_PREVALENCE``), a dict of per-class prevalences (missing
  names keep their default) or a float that multiplies every default (clipped to [0, 1]).
* ``difficulty`` in [0, 1]: finding contrast falls linearly from 1 to 0.3 of the easy contrast,
  and the drawn cardiothoracic ratios keep a gap from 0.5 that falls from 0.10 to 0.04 (normal
  hearts in [0.5 - gap - 0.08, 0.5 - gap], enlarged ones in [0.5 + gap, 0.5 + gap + 0.1]; the
  visible silhouette, cut by the diaphragm, reads slightly lower but stays above 0.5).
* ``uncertain_rate``: each positive label independently becomes -1 (CheXpert's "uncertain")
  with this probability; the finding is still drawn and masked, at ``UNCERTAIN_STRENGTH`` of its
  contrast (uncertain mentions are borderline findings). Negatives are never uncertain.
* ``unlabeled``: labels are all ``nan``; the findings are drawn and masked as usual.
* ``shortcut``: a class name; a small bright glyph is burned into the top-right corner. In
  ``train`` it is present iff the finding is present with probability ``shortcut_p`` (else the
  opposite); in the other splits it is present with the finding's prevalence, independently of
  it. ``.marker`` holds the per-image flag, ``info.extra["marker_box"]`` its pixel box.
* Images are 8-bit (stored and returned as ``uint8 / 255``), one channel.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError
from .base import DatasetInfo
from .synth_cache import MappedArrays, load_or_build
from .synth_chest import CLASS_NAMES, UNCERTAIN_STRENGTH, render, render_case, sample_case, to_float
from .synth_fields import key_rng

__all__ = ["CLASS_NAMES", "DEFAULT_PREVALENCE", "SyntheticChestXray", "render_case", "marker_box",
           "UNCERTAIN_STRENGTH"]

SPLITS = {"train": 0, "val": 1, "test": 2, "unlabeled": 3}
DEFAULT_SIZES = {"train": 1000, "val": 250, "test": 250, "unlabeled": 1000}
DEFAULT_PREVALENCE = {"Atelectasis": 0.30, "Cardiomegaly": 0.25, "Consolidation": 0.15, "Edema": 0.25,
                      "Pleural Effusion": 0.35}
# latent correlations, order of CLASS_NAMES
CORRELATION = np.array([
    [1.00, 0.10, 0.25, 0.10, 0.35],
    [0.10, 1.00, 0.05, 0.50, 0.40],
    [0.25, 0.05, 1.00, 0.05, 0.20],
    [0.10, 0.50, 0.05, 1.00, 0.55],
    [0.35, 0.40, 0.20, 0.55, 1.00],
])
_CHOL = np.linalg.cholesky(CORRELATION)
_LABELS = 7  # random stream of the labels / marker within a case key
_GLYPH = np.array([[1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]], bool)


def _check_unit(name: str, value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"SyntheticChestXray: {name} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"SyntheticChestXray: {name} must be in [0, 1], got {value}")
    return value


def resolve_prevalence(prevalence) -> dict[str, float]:
    """Per-class prevalences from ``None``, a dict or a float scale (see module notes)."""
    if prevalence is None:
        return dict(DEFAULT_PREVALENCE)
    if isinstance(prevalence, dict):
        unknown = set(prevalence) - set(CLASS_NAMES)
        if unknown:
            raise ConfigError(f"SyntheticChestXray: prevalence names unknown class(es) {sorted(unknown)}; "
                              f"choose from {list(CLASS_NAMES)}")
        out = dict(DEFAULT_PREVALENCE)
        out.update({k: _check_unit(f"prevalence[{k!r}]", v) for k, v in prevalence.items()})
        return out
    if isinstance(prevalence, (int, float)) and not isinstance(prevalence, bool) and prevalence >= 0:
        return {k: min(1.0, v * float(prevalence)) for k, v in DEFAULT_PREVALENCE.items()}
    raise ConfigError(f"SyntheticChestXray: prevalence must be None, a dict or a non-negative number, "
                      f"got {prevalence!r}")


def sample_labels(seed: int, split: str, n: int, prevalence: dict, uncertain_rate: float,
                  shortcut: str | None, shortcut_p: float):
    """``(state (n, 5) int8 in {1, -1, 0}, marker (n,) bool)`` of a split; state -1 is an
    uncertain positive."""
    p = np.array([prevalence[k] for k in CLASS_NAMES])
    nd = NormalDist()
    thresholds = np.array([np.inf if q <= 0 else -np.inf if q >= 1 else nd.inv_cdf(1.0 - q) for q in p])
    state = np.zeros((n, len(CLASS_NAMES)), np.int8)
    marker = np.zeros(n, bool)
    k = CLASS_NAMES.index(shortcut) if shortcut else 0
    for i in range(n):
        rng = key_rng(seed, SPLITS[split], i, _LABELS)
        z = _CHOL @ rng.standard_normal(len(CLASS_NAMES))
        unsure = rng.random(len(CLASS_NAMES)) < uncertain_rate
        agree, chance = rng.random(2)
        present = z > thresholds
        state[i] = np.where(present, np.where(unsure, -1, 1), 0)
        if split == "train":
            marker[i] = present[k] if agree < shortcut_p else not present[k]
        else:
            marker[i] = chance < p[k]
    return state, marker if shortcut else np.zeros(n, bool)


def marker_box(size: int) -> tuple[int, int, int, int]:
    """Pixel box ``(row0, row1, col0, col1)`` (end-exclusive) of the shortcut glyph."""
    cell = max(1, round(size / 64))
    side = 7 * cell
    margin = max(1, round(0.03 * size))
    return margin, margin + side, size - margin - side, size - margin


def draw_marker(image: np.ndarray) -> np.ndarray:
    """Burn the glyph (bright strokes on a dark square) into an 8-bit image in place."""
    size = image.shape[-1]
    r0, r1, c0, c1 = marker_box(size)
    cell = (r1 - r0) // 7
    glyph = np.zeros((7, 7), bool)
    glyph[1:6, 1:6] = _GLYPH
    image[r0:r1, c0:c1] = np.where(np.kron(glyph, np.ones((cell, cell), bool)), 242, 12).astype(np.uint8)
    return image


class SyntheticChestXray(MappedArrays, Dataset):
    """Synthetic frontal chest radiographs with the five CheXpert findings and their masks.

    Items follow :mod:`sibnet.data.base`: ``image`` (1, H, W), ``label`` (5,) in {1, 0, -1} or
    ``nan`` (unlabeled), ``mask`` (5, H, W), ``id``, ``patient``. See the module notes for the
    conventions of every knob. With ``cache=True`` the whole split is generated once and stored
    under ``root`` (default ``$SIBNET_CACHE/synthetic`` or ``~/.cache/sibnet/synthetic``);
    with ``cache=False`` images are drawn on access (identical bytes).
    """

    def __init__(self, root=None, split: str = "train", size: int = 128, n: int | None = None, seed: int = 0, *,
                 prevalence=None, difficulty: float = 0.5, uncertain_rate: float = 0.0,
                 shortcut: str | None = None, shortcut_p: float = 0.9, cache: bool = True):
        if split not in SPLITS:
            raise ConfigError(f"SyntheticChestXray: split must be one of {list(SPLITS)}, got {split!r}")
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 16:
            raise ConfigError(f"SyntheticChestXray: size must be an integer >= 16, got {size!r}")
        n = DEFAULT_SIZES[split] if n is None else n
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ConfigError(f"SyntheticChestXray: n must be a non-negative integer, got {n!r}")
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
            raise ConfigError(f"SyntheticChestXray: seed must be an integer, got {seed!r}")
        if shortcut is not None and shortcut not in CLASS_NAMES:
            raise ConfigError(f"SyntheticChestXray: shortcut {shortcut!r} is not a class name; "
                              f"choose from {list(CLASS_NAMES)}")
        self.split, self.size, self.n, self.seed = split, int(size), int(n), int(seed)
        self.difficulty = _check_unit("difficulty", difficulty)
        self.uncertain_rate = _check_unit("uncertain_rate", uncertain_rate)
        self.shortcut_p = _check_unit("shortcut_p", shortcut_p)
        self.shortcut = shortcut
        self.prevalence = resolve_prevalence(prevalence)
        self.findings, self.marker = sample_labels(self.seed, split, self.n, self.prevalence, self.uncertain_rate,
                                                   shortcut, self.shortcut_p)
        self.labels = (np.full(self.findings.shape, np.nan, np.float32) if split == "unlabeled"
                       else self.findings.astype(np.float32))
        self.info = DatasetInfo(name="synthetic", class_names=CLASS_NAMES, task="multilabel", in_channels=1,
                                has_masks=True, extra={"shortcut": shortcut, "shortcut_p": self.shortcut_p,
                                                       "marker_box": marker_box(self.size)})
        self._images = self._maskbits = None
        if cache:
            knobs = dict(split=split, n=self.n, size=self.size, seed=self.seed, difficulty=self.difficulty,
                         uncertain_rate=self.uncertain_rate, shortcut=shortcut, shortcut_p=self.shortcut_p,
                         prevalence=self.prevalence)
            arrays = load_or_build(root, "chestxray", knobs, self._build)
            self._images, self._maskbits = arrays["images"], arrays["maskbits"]

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Draw image ``index``: ``(uint8 (H, W), bool masks (5, H, W))``, no cache involved."""
        state = dict(zip(CLASS_NAMES, (int(s) for s in self.findings[index])))
        case = sample_case((self.seed, SPLITS[self.split], index), state, self.difficulty)
        img, masks, _ = render(case, self.size)
        if self.marker[index]:
            draw_marker(img)
        return img, masks

    def _build(self) -> dict[str, np.ndarray]:
        images = np.zeros((self.n, self.size, self.size), np.uint8)
        maskbits = np.zeros((self.n, self.size, self.size), np.uint8)
        weights = (1 << np.arange(len(CLASS_NAMES), dtype=np.uint8))[:, None, None]
        for i in range(self.n):
            images[i], masks = self.render(i)
            maskbits[i] = (masks * weights).sum(0, dtype=np.uint8)
        return {"images": images, "maskbits": maskbits}

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        if not -self.n <= index < self.n:
            raise IndexError(f"SyntheticChestXray({self.split}): index {index} out of range for {self.n} images")
        index = index % self.n
        if self._images is not None:
            img = np.asarray(self._images[index])
            bits = np.asarray(self._maskbits[index])
            masks = (bits[None] >> np.arange(len(CLASS_NAMES), dtype=np.uint8)[:, None, None]) & 1
        else:
            img, masks = self.render(index)
        return {
            "image": torch.from_numpy(to_float(img)[None]),
            "label": torch.from_numpy(self.labels[index].copy()),
            "mask": torch.from_numpy(masks.astype(np.float32)),
            "id": f"synthetic-{self.split}-{index:05d}",
            "patient": f"synthetic-{self.split}-p{index:05d}",
        }
