"""Resizing to the training size, intensity normalisation and light augmentation.

Conventions:

* ``size`` is an int (square ``size x size``) or ``(height, width)``; images are resized with
  antialiased bilinear interpolation (``torch.nn.functional.interpolate(..., antialias=True,
  align_corners=False)``), masks and instance maps with nearest-neighbour (``"nearest-exact"``,
  the pixel-centre convention), so labels are never blended.
* :func:`resize_image` keeps the source's quantisation: an 8-bit image stays uint8 (rounded), a
  deeper one becomes float16 in [0, 1]; :func:`to_unit_float` turns either into float32 in [0, 1].
  This is the form the dataset cache stores, so a cached and an uncached pass give the same bytes.
* :class:`LightAugment` is a seeded callable on item dicts: small random rotation (±10°),
  translation (±5 %) and scaling (±10 %) applied with the same draw to ``image``, ``mask`` and
  ``instances`` (nearest for the last two), then brightness (additive ±0.1) and contrast
  (gamma 0.8..1.25) on the image only, clipped to [0, 1]. It is seeded with ``seed``; each
  DataLoader worker reseeds it through :func:`worker_init` (pass it as ``worker_init_fn``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def as_hw(size: int | Sequence[int], name: str = "image_size") -> tuple[int, int]:
    """``size`` as ``(height, width)``; a ConfigError naming ``name`` when it is not positive."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        hw = (int(size), int(size))
    elif isinstance(size, Sequence) and len(size) == 2 and all(isinstance(s, (int, np.integer)) for s in size):
        hw = (int(size[0]), int(size[1]))
    else:
        raise ConfigError(f"{name} must be an int or (height, width), got {size!r}")
    if min(hw) < 1:
        raise ConfigError(f"{name} must be positive, got {size!r}")
    return hw


def resize_image(arr: np.ndarray, max_value: float, size: int | Sequence[int]) -> np.ndarray:
    """``(H, W, C)`` decoded pixels -> ``(C, h, w)`` uint8 (8-bit sources) or float16 in [0, 1]."""
    h, w = as_hw(size)
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(2, 0, 1)[None] / float(max_value)
    if x.shape[-2:] != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    x = x[0].clamp_(0.0, 1.0)
    if arr.dtype == np.uint8 and max_value == 255.0:
        return torch.round(x * 255.0).to(torch.uint8).numpy()
    return x.to(torch.float16).numpy()


def resize_labels(labels: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resize of an integer map ``(H, W)`` or stack ``(K, H, W)``; dtype kept."""
    h, w = as_hw(size)
    if labels.shape[-2:] == (h, w):
        return labels
    squeeze = labels.ndim == 2
    x = torch.from_numpy(np.ascontiguousarray(labels if not squeeze else labels[None])).to(torch.float64)
    x = F.interpolate(x[None], size=(h, w), mode="nearest-exact")[0]
    out = x.to(torch.int64).numpy().astype(labels.dtype)
    return out[0] if squeeze else out


def to_unit_float(arr: np.ndarray) -> torch.Tensor:
    """Cached/resized pixels (uint8 or float16) -> float32 tensor in [0, 1]."""
    t = torch.from_numpy(np.array(arr))
    if t.dtype == torch.uint8:
        return t.to(torch.float32) / 255.0
    return t.to(torch.float32)


def normalizer(normalize, channels: int):
    """``None`` | ``"imagenet"`` | ``(mean, std)`` -> a callable on ``(C, H, W)`` float tensors."""
    if normalize is None or normalize is False:
        return None
    if normalize == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        if channels == 1:
            mean, std = (float(np.mean(mean)),), (float(np.mean(std)),)
    elif isinstance(normalize, Sequence) and len(normalize) == 2 and not isinstance(normalize, str):
        mean, std = normalize
        mean = tuple(np.broadcast_to(np.asarray(mean, dtype=float), (channels,)))
        std = tuple(np.broadcast_to(np.asarray(std, dtype=float), (channels,)))
    else:
        raise ConfigError(f"normalize must be None, 'imagenet' or (mean, std), got {normalize!r}")
    if any(s <= 0 for s in std):
        raise ConfigError(f"normalize: std must be positive, got {std}")
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return lambda x: (x - m) / s


class LightAugment:
    """The light augmentation of the module doc; a callable on item dicts (tensors), seeded.

    One draw per call: angle ~ U(-rotate_deg, rotate_deg), shift ~ U(-translate, translate) of the
    height/width, zoom ~ U(1 - scale, 1 + scale), brightness offset ~ U(-brightness, brightness),
    gamma ~ U(*gamma) (log-uniform). Geometry uses MONAI's ``Affine`` (zero padding).
    """

    def __init__(self, seed: int = 0, *, rotate_deg: float = 10.0, translate: float = 0.05, scale: float = 0.1,
                 brightness: float = 0.1, gamma: tuple[float, float] = (0.8, 1.25)):
        self.rotate_deg, self.translate, self.scale = float(rotate_deg), float(translate), float(scale)
        self.brightness, self.gamma = float(brightness), (float(gamma[0]), float(gamma[1]))
        self.set_random_state(seed)

    def set_random_state(self, seed: int | None = None):
        self.rng = np.random.default_rng(seed)
        return self

    def __call__(self, item: dict) -> dict:
        from monai.transforms import Affine

        r = self.rng
        h, w = item["image"].shape[-2:]
        angle = np.deg2rad(r.uniform(-self.rotate_deg, self.rotate_deg))
        shift = (r.uniform(-self.translate, self.translate) * h, r.uniform(-self.translate, self.translate) * w)
        zoom = r.uniform(1 - self.scale, 1 + self.scale)
        offset = r.uniform(-self.brightness, self.brightness)
        g = float(np.exp(r.uniform(np.log(self.gamma[0]), np.log(self.gamma[1]))))
        out = dict(item)
        for key in ("image", "mask", "instances"):
            if key not in item:
                continue
            x = item[key]
            flat = x.ndim == 2
            x = x[None] if flat else x
            aff = Affine(rotate_params=angle, translate_params=shift, scale_params=(zoom, zoom),
                         padding_mode="zeros", mode="bilinear" if key == "image" else "nearest", image_only=True)
            y = torch.as_tensor(aff(x.to(torch.float32))).as_subclass(torch.Tensor)
            y = y[0] if flat else y
            out[key] = y if key == "image" else y.round().to(item[key].dtype)
        out["image"] = (out["image"] + offset).clamp(0.0, 1.0) ** g
        return out


def worker_init(worker_id: int) -> None:
    """``worker_init_fn`` for DataLoader: reseed a dataset's :class:`LightAugment` per worker."""
    info = torch.utils.data.get_worker_info()
    ds = getattr(info, "dataset", None)
    while ds is not None:
        aug = getattr(ds, "augment", None)
        if isinstance(aug, LightAugment):
            aug.set_random_state(int(info.seed % 2**32))
        ds = getattr(ds, "dataset", None)
