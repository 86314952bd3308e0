"""Class distinctiveness L_CD, eq. (1) of the paper (docs/design.md, Losses: 'L_CD').

For each image, the K class maps are embedded (Z_c, one vector per class) and L_CD is the mean of
the plain cosine similarity cos(Z_i, Z_j) over the K(K-1)/2 class pairs i < j (not its absolute
value), then the mean over the images of the batch.

Conventions:
- The cosine is :func:`torch.nn.functional.cosine_similarity` with ``eps=1e-8``: each vector is
  divided by ``max(||z||, eps)``, so a zero embedding has cosine 0 with everything (it counts as
  "unrelated", neither similar nor opposite) and value and gradient stay finite.
- K = 1 has no pair: the value is 0 (and the gradient is 0).
"""

from __future__ import annotations

from typing import Callable, Union

import torch
import torch.nn.functional as F

from sibnet.errors import ConfigError
from sibnet.losses.normalise import check_maps

Embed = Union[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]
REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str) -> None:
    """ConfigError unless ``reduction`` is one of :data:`REDUCTIONS` ("mean", "sum" or "none")."""
    if reduction not in REDUCTIONS:
        raise ConfigError(f"reduction: expected one of {', '.join(REDUCTIONS)}, got {reduction!r}")


def reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    """``values`` reduced by ``reduction``: their mean ("mean"), their sum ("sum"), or themselves
    unchanged (any other value, e.g. "none")."""
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


def embed_maps(maps: torch.Tensor, embed: Embed, *, checked: bool = False) -> torch.Tensor:
    """The (B, K, D) embeddings of a (B, K, H, W) batch of maps.

    ``embed`` is a callable taking the (B*K, H, W) stack of all maps (image-major: row b*K + c is
    class c of image b) and returning (B*K, D) features; it is called exactly once. A (B, K, D)
    tensor is returned as it is (after a shape check). ``checked``: the caller has checked ``maps``
    already (:func:`~sibnet.losses.normalise.check_maps` is skipped).
    """
    if not checked:
        check_maps(maps)
    b, k = maps.shape[:2]
    if isinstance(embed, torch.Tensor):
        z = embed
        if z.ndim != 3 or tuple(z.shape[:2]) != (b, k):
            raise ConfigError(f"embed: expected a ({b}, {k}, D) tensor for maps of shape "
                              f"{tuple(maps.shape)}, got {tuple(z.shape)}")
        return z
    if not callable(embed):
        raise ConfigError(f"embed: expected a callable or a (B, K, D) tensor, got {type(embed).__name__}")
    z = embed(maps.reshape(b * k, *maps.shape[2:]))
    if not isinstance(z, torch.Tensor) or z.ndim < 2 or z.shape[0] != b * k:
        shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise ConfigError(f"embed: the callable must map ({b * k}, H, W) maps to ({b * k}, D) "
                          f"features, returned {shape}")
    return z.reshape(b, k, -1)


def pairwise_cosine(z: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(B, K(K-1)/2) cosine similarities of the class pairs i < j, in ``torch.triu_indices`` order."""
    k = z.shape[1]
    i, j = torch.triu_indices(k, k, offset=1, device=z.device)
    return F.cosine_similarity(z[:, i], z[:, j], dim=-1, eps=eps)


def class_distinctiveness(maps: torch.Tensor, embed: Embed, reduction: str = "mean", *,
                          checked: bool = False) -> torch.Tensor:
    """L_CD of a (B, K, H, W) batch of (normalised) saliency maps.

    ``embed``: a callable (B*K, H, W) -> (B*K, D) (e.g. the model's encoder up to the pooled
    penultimate features, with the maps replicated to the input channels by the caller), or the
    already computed (B, K, D) embeddings. ``reduction``: "mean" (scalar, the mean over images of
    the per-image pair mean), "sum" (sum over images) or "none" (the (B,) per-image values).
    Differentiable with respect to the maps and to whatever ``embed`` uses. ``checked``: the caller
    has checked ``maps`` already.
    """
    check_reduction(reduction)
    z = embed_maps(maps, embed, checked=checked)
    if not z.is_floating_point():
        raise ConfigError(f"embed: expected floating-point features, got {z.dtype}")
    if z.shape[1] < 2:
        per_image = z.sum(dim=(1, 2)) * 0.0  # no class pair: 0, still attached to the graph
    else:
        per_image = pairwise_cosine(z).mean(dim=1)
    return reduce(per_image, reduction)
