"""SyntheticGlands: H&E-like colon histology tiles with gland instance masks and a grade.

Conventions
-----------
* Tile coordinates ``(u, v)`` in ``[0, 1]`` (left to right, top to bottom); shapes are defined in
  these units, so a case looks the same at any pixel size.
* Stain model: optical density ``OD = H * h + E * e`` with the haematoxylin and eosin vectors of
  Ruifrok & Johnston (2001), ``RGB = exp(-OD)``; per-tile stain strengths, brightness and noise
  vary like different scanners and staining batches.
* A gland is a star-shaped region (a radius modulated by low harmonics) drawn as a ring of
  epithelium (purple cytoplasm, nuclei) around a pale lumen in pink stroma with scattered
  stromal nuclei. Its instance mask is the whole gland, lumen included (the GlaS convention).
* ``benign`` (label index 0): a few round, regular, separated glands with an open lumen and one
  basal row of small nuclei. ``malignant`` (index 1): more, smaller-to-larger irregular glands
  (strong harmonics), crowded, overlapping glands fused into one instance, solid (no lumen) or
  cribriform (several small lumens), stratified, larger, darker nuclei.
* Items: ``image`` (3, H, W) float32 in [0, 1] (8-bit values / 255), ``label`` one-hot (2,),
  ``mask`` (1, H, W) binary gland mask, ``instances`` (H, W) int64 with ids 1..K (0 background),
  ``id``, ``patient``. Image ``i`` of a split depends on ``(seed, split, i)`` alone.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError
from .base import DatasetInfo
from .synth_cache import MappedArrays, load_or_build
from .synth_fields import Frame, fourier_field, inside, key_rng

CLASS_NAMES = ("benign", "malignant")
SPLITS = {"train": 0, "val": 1, "test": 2}
DEFAULT_SIZES = {"train": 500, "val": 100, "test": 100}
HEMATOXYLIN = np.array([0.650, 0.704, 0.286])
EOSIN = np.array([0.072, 0.990, 0.105])


def sample_glands(rng: np.random.Generator, malignant: bool) -> list[dict]:
    """Gland shapes of one tile, placed by rejection sampling (benign: separated by a gap)."""
    glands: list[dict] = []
    target = int(rng.integers(6, 11)) if malignant else int(rng.integers(3, 6))
    for _ in range(200):
        if len(glands) >= target:
            break
        r = rng.uniform(0.07, 0.15) if malignant else rng.uniform(0.10, 0.15)
        c = rng.uniform(0.03, 0.97, 2)
        gap = -0.35 * r if malignant else 0.04  # malignant glands may overlap (and fuse)
        if any(np.hypot(*(c - g["c"])) < r + g["r"] + gap for g in glands):
            continue
        amp = rng.uniform(0.04, 0.15, 4) * np.array([1.4, 1.0, 0.7, 0.5]) if malignant else rng.uniform(0.0, 0.03, 4)
        kind = (rng.choice(["open", "solid", "cribriform"], p=[0.3, 0.35, 0.35]) if malignant else "open")
        glands.append(dict(
            c=c, r=r, stretch=rng.uniform(1.0, 1.35), angle=rng.uniform(0, np.pi), amp=amp,
            phase=rng.uniform(0, 2 * np.pi, 4), kind=str(kind), lumen=rng.uniform(0.45, 0.62),
            holes=rng.uniform(-0.45, 0.45, (int(rng.integers(2, 5)), 2)), hole_r=rng.uniform(0.12, 0.22),
        ))
    return glands


def _polar(g: dict, u, v):
    """Normalised radius (1 on the gland border) and angle of every point w.r.t. gland ``g``."""
    du, dv = u - g["c"][0], v - g["c"][1]
    ca, sa = np.cos(g["angle"]), np.sin(g["angle"])
    p, q = (ca * du + sa * dv) / g["stretch"], -sa * du + ca * dv
    theta = np.arctan2(q, p)
    radius = g["r"] * (1.0 + sum(g["amp"][k] * np.cos((k + 2) * theta + g["phase"][k]) for k in range(4)))
    return np.hypot(p, q) / radius, theta, radius


def _fuse(masks: list[np.ndarray]) -> np.ndarray:
    """Instance map in which overlapping glands share one id; ids 1..K in order of first gland."""
    n = len(masks)
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            if (masks[i] & masks[j]).any():
                parent[find(j)] = find(i)
    shape = masks[0].shape if masks else (0, 0)
    out = np.zeros(shape, np.int64)
    ids: dict[int, int] = {}
    for i, m in enumerate(masks):
        if m.any():
            out[m] = ids.setdefault(find(i), len(ids) + 1)
    return out


def _nuclei(image: np.ndarray, centres, axes, angles, value, size: int) -> None:
    """Max-composite soft elliptic nuclei (unit coordinates) into ``image`` in place."""
    if len(centres) == 0:
        return
    half = int(np.ceil(axes.max() * size)) + 1
    off = np.arange(-half, half + 1)
    ci = np.floor(centres * size).astype(int)  # (N, 2) column, row of the containing pixel
    cols = ci[:, 0, None, None] + off[None, None, :]
    rows = ci[:, 1, None, None] + off[None, :, None]
    pu = (cols + 0.5) / size - centres[:, 0, None, None]
    pv = (rows + 0.5) / size - centres[:, 1, None, None]
    ca, sa = np.cos(angles)[:, None, None], np.sin(angles)[:, None, None]
    r = np.hypot((ca * pu + sa * pv) / axes[:, 0, None, None], (-sa * pu + ca * pv) / axes[:, 1, None, None])
    val = value[:, None, None] * inside((1.0 - r) * axes[:, 1, None, None] * size, 1.0)
    rows, cols = np.broadcast_arrays(rows, cols)
    ok = (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size) & (val > 0)
    np.maximum.at(image, (rows[ok], cols[ok]), val[ok])


def _lumen(g: dict, u, v, rho, radius, px: float) -> np.ndarray:
    """Soft lumen of gland ``g`` in [0, 1]: one open lumen, several small ones (cribriform) or none (solid)."""
    if g["kind"] == "open":
        return inside((g["lumen"] - rho) * radius, 1.5 * px)
    lumen = np.zeros_like(rho)
    if g["kind"] == "cribriform":
        for h in g["holes"]:
            d = np.hypot(u - (g["c"][0] + h[0] * g["r"]), v - (g["c"][1] + h[1] * g["r"]))
            lumen = np.maximum(lumen, inside(g["hole_r"] * g["r"] - d, 1.5 * px))
        lumen = lumen * inside((0.8 - rho) * radius, px)
    return lumen


def _gland_nuclei(rng: np.random.Generator, g: dict, malignant: bool) -> tuple[np.ndarray, ...]:
    """Epithelial nuclei of gland ``g``: one basal row (benign) or stratified, larger, pleomorphic (malignant).

    Returns:
        Centres (N, 2) in unit coordinates, axes (N, 2), angles (N,) and haematoxylin values (N,).
    """
    perim = 2 * np.pi * g["r"] * (1.0 + 0.5 * np.abs(g["amp"]).sum())
    count = int(perim / (0.017 if malignant else 0.018)) * (2 if malignant else 1)
    ang = np.linspace(0, 2 * np.pi, count, endpoint=False) + rng.uniform(0, 2 * np.pi)
    depth = rng.uniform(0.5, 0.92, count) if malignant else np.full(count, 0.86) + rng.normal(0, 0.015, count)
    rad = g["r"] * (1.0 + sum(g["amp"][k] * np.cos((k + 2) * ang + g["phase"][k]) for k in range(4)))
    p, q = depth * rad * np.cos(ang) * g["stretch"], depth * rad * np.sin(ang)
    ca, sa = np.cos(g["angle"]), np.sin(g["angle"])
    centres = np.stack([g["c"][0] + ca * p - sa * q, g["c"][1] + sa * p + ca * q], 1)
    scale = rng.uniform(1.0, 1.6, count) if malignant else rng.uniform(0.9, 1.05, count)
    axes = np.stack([0.014 * scale, 0.0075 * scale], 1)
    angles = ang + g["angle"] + rng.normal(0, 0.5 if malignant else 0.1, count)
    values = rng.uniform(1.7, 2.3, count) if malignant else rng.uniform(1.3, 1.6, count)
    return centres, axes, angles, values


def _stromal_nuclei(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """30 to 59 scattered stromal nuclei, anywhere in the tile (same arrays as :func:`_gland_nuclei`)."""
    n_stroma = int(rng.integers(30, 60))
    centres = rng.uniform(0, 1, (n_stroma, 2))
    axes = np.stack([rng.uniform(0.010, 0.016, n_stroma), rng.uniform(0.004, 0.006, n_stroma)], 1)
    return centres, axes, rng.uniform(0, np.pi, n_stroma), rng.uniform(1.1, 1.5, n_stroma)


def _nuclei_map(gland_nuclei: list[tuple], stromal_nuclei: tuple, epi_all: np.ndarray, size: int) -> np.ndarray:
    """Haematoxylin (H, W) of all nuclei: every gland nucleus, the stromal ones that fall outside the glands."""
    nuc_c, nuc_ax, nuc_ang, nuc_val = (np.concatenate(parts) for parts in zip(*gland_nuclei, stromal_nuclei))
    in_gland = np.zeros(len(nuc_c), bool)
    in_gland[: len(nuc_c) - len(stromal_nuclei[0])] = True
    cidx = np.clip((nuc_c * size).astype(int), 0, size - 1)
    keep = in_gland | (epi_all[cidx[:, 1], cidx[:, 0]] < 0.5)  # stromal nuclei stay outside glands
    hmask = np.zeros((size, size), np.float32)
    _nuclei(hmask, nuc_c[keep], nuc_ax[keep], nuc_ang[keep], nuc_val[keep], size)
    return hmask


def _stain(rng: np.random.Generator, H: np.ndarray, E: np.ndarray, size: int) -> np.ndarray:
    """RGB uint8 (H, W, 3) of the stain densities: per-tile stain strengths, brightness and noise."""
    kh, ke = rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2)
    od = kh * H[..., None] * HEMATOXYLIN + ke * E[..., None] * EOSIN
    rgb = np.exp(-od) * rng.uniform(0.92, 1.0) + rng.normal(0, 0.012, (size, size, 3))
    return np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def render_tile(key, size: int = 128, malignant: bool | None = None):
    """Draw one tile: ``(rgb uint8 (H, W, 3), instances int64 (H, W), malignant bool)``.
    ``malignant=None`` draws the grade from the key (probability 0.5)."""
    key = (key,) if np.isscalar(key) else tuple(key)
    grade_rng = key_rng(*key, 1)
    drawn = bool(grade_rng.random() < 0.5)
    malignant = drawn if malignant is None else bool(malignant)
    rng = key_rng(*key, 2 + int(malignant))
    frame = Frame(size, (0.5, 0.0, 0.5), (0.0, 0.5, 0.5))
    u, v, px = frame.u, frame.v, 1.0 / size

    glands = sample_glands(rng, malignant)
    stroma_tex = 1.0 - 2.0 * np.abs(np.tanh(fourier_field(rng, frame, 24, (70.0, 160.0))))  # fibres
    pale = fourier_field(rng, frame, 8, (6.0, 14.0))
    E = 0.34 + 0.10 * stroma_tex - 0.10 * np.clip(pale - 0.8, 0, None)
    H = 0.06 + 0.02 * stroma_tex
    masks, gland_nuclei = [], []
    epi_all = np.zeros((size, size), np.float32)
    lumen_all = np.zeros((size, size), np.float32)
    for g in glands:
        rho, _, radius = _polar(g, u, v)
        outer = inside((1.0 - rho) * radius, 1.5 * px)
        masks.append(outer > 0.5)
        epi_all = np.maximum(epi_all, outer)
        lumen_all = np.maximum(lumen_all, _lumen(g, u, v, rho, radius, px))
        gland_nuclei.append(_gland_nuclei(rng, g, malignant))
    hmask = _nuclei_map(gland_nuclei, _stromal_nuclei(rng), epi_all, size)

    epi = epi_all * (1.0 - lumen_all)
    E = E * (1.0 - epi_all) + 0.26 * epi + 0.06 * lumen_all * epi_all
    H = H * (1.0 - epi_all) + (0.36 if malignant else 0.30) * epi + 0.01 * lumen_all * epi_all
    H = np.maximum(H, hmask * (1.0 - 0.8 * lumen_all))
    return _stain(rng, H, E, size), _fuse(masks), malignant


class SyntheticGlands(MappedArrays, Dataset):
    """Synthetic H&E gland tiles graded benign / malignant (see the module notes)."""

    def __init__(self, root=None, split: str = "train", size: int = 128, n: int | None = None, seed: int = 0,
                 cache: bool = True):
        if split not in SPLITS:
            raise ConfigError(f"SyntheticGlands: split must be one of {list(SPLITS)}, got {split!r}")
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 16:
            raise ConfigError(f"SyntheticGlands: size must be an integer >= 16, got {size!r}")
        n = DEFAULT_SIZES[split] if n is None else n
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ConfigError(f"SyntheticGlands: n must be a non-negative integer, got {n!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ConfigError(f"SyntheticGlands: seed must be an integer, got {seed!r}")
        self.split, self.size, self.n, self.seed = split, int(size), int(n), int(seed)
        self.info = DatasetInfo(name="synthetic-glands", class_names=CLASS_NAMES, task="multiclass", in_channels=3,
                                has_masks=True)
        self.grades = np.array([key_rng(self.seed, SPLITS[split], i, 1).random() < 0.5 for i in range(self.n)],
                               dtype=bool).reshape(self.n)
        self._images = self._instances = None
        if cache:
            knobs = dict(split=split, n=self.n, size=self.size, seed=self.seed)
            arrays = load_or_build(root, "glands", knobs, self._build)
            self._images, self._instances = arrays["images"], arrays["instances"]

    def render(self, index: int):
        """Draw tile ``index``: ``(rgb uint8 (H, W, 3), instances int64 (H, W))``, no cache."""
        rgb, inst, _ = render_tile((self.seed, SPLITS[self.split], index), self.size)
        return rgb, inst

    def _build(self):
        images = np.zeros((self.n, self.size, self.size, 3), np.uint8)
        instances = np.zeros((self.n, self.size, self.size), np.uint16)
        for i in range(self.n):
            images[i], inst = self.render(i)
            instances[i] = inst
        return {"images": images, "instances": instances}

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        if not -self.n <= index < self.n:
            raise IndexError(f"SyntheticGlands({self.split}): index {index} out of range for {self.n} tiles")
        index = index % self.n
        if self._images is not None:
            rgb, inst = np.asarray(self._images[index]), np.asarray(self._instances[index]).astype(np.int64)
        else:
            rgb, inst = self.render(index)
        label = np.zeros(2, np.float32)
        label[int(self.grades[index])] = 1.0
        return {
            "image": torch.from_numpy(rgb.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)),
            "label": torch.from_numpy(label),
            "mask": torch.from_numpy((inst > 0).astype(np.float32)[None]),
            "instances": torch.from_numpy(inst),
            "id": f"synthetic-glands-{self.split}-{index:05d}",
            "patient": f"synthetic-glands-{self.split}-p{index:05d}",
        }
