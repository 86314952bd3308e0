"""Spatial coherence L_SC, eq. (2) of the paper (docs/design.md, Losses: 'L_SC' and 'Scale of L_SC').

For every map S (one image, one class), with cluster labels from :func:`sibnet.losses.clusters.clusters`:

    L_SC(S) = sum over pixels p in a cluster, sum over q != p in the (2r+1) x (2r+1) window
              around p (clipped at the image border) with label(q) == label(p) of (S_p - S_q)^2.

The pairs are ordered, so each unordered pair {p, q} counts twice. Pixels with label 0 (below the
threshold) belong to no cluster and contribute nothing, unless ``background_cluster=True`` makes the
background of each map one more cluster. The value is the sum per map, then the mean over the B*K
maps (``reduction="mean"``), their sum ("sum") or the (B, K) per-map sums ("none").

``scale="pair_mean"`` (not the paper's definition, an option) divides each map's sum by the number
of ordered same-cluster pairs it counted (1 where there are none), i.e. the mean squared difference
per neighbouring pair, a value in [0, 1] for normalised maps whatever the image size. The paper's
sum grows with the clusters' area and the window (10-300x the weighted BCE at 32-128 px, see
docs/design.md), so with the paper's lambdas it dominates the objective.

The labels are computed on the detached maps (no gradient through the thresholding); the value is
differentiable with respect to the maps (once: an explicit backward). The sum runs as a loop over
the (2r+1)^2 // 2 half-offsets (dy, dx) with shifted slices, each giving the pair once, times 2.
"""

from __future__ import annotations

import torch

from sibnet.errors import ConfigError
from sibnet.loss_options import LossOptions, ScScale, check_option, choices
from sibnet.losses.clusters import clusters
from sibnet.losses.distinctiveness import check_reduction, reduce
from sibnet.losses.normalise import check_maps

SCALES = choices(ScScale)


def half_offsets(radius: int) -> list[tuple[int, int]]:
    """The offsets (dy, dx) of a (2r+1)^2 window with (dy, dx) > (0, 0) lexicographically."""
    return [(dy, dx) for dy in range(0, radius + 1) for dx in range(-radius, radius + 1)
            if dy > 0 or dx > 0]


def _windows(radius: int, h: int, w: int):
    """For each half-offset inside an h x w map: the slices of p = (y, x) and q = (y + dy, x + dx)
    over the pixels where both lie in the map."""
    for dy, dx in half_offsets(radius):
        if dy >= h or abs(dx) >= w:
            continue
        yield ((slice(0, h - dy), slice(max(0, -dx), w - max(0, dx))),
               (slice(dy, h), slice(max(0, dx), w - max(0, -dx))))


def _own_labels(labels: torch.Tensor) -> torch.Tensor:
    """Every unclustered pixel (label 0) gets its own negative label, so that "same label" alone
    means "same cluster"."""
    h, w = labels.shape[-2:]
    labels = labels.to(torch.long)
    own = -torch.arange(1, h * w + 1, device=labels.device).reshape(h, w)
    return torch.where(labels > 0, labels, own)


class _PairSums(torch.autograd.Function):
    """``(sum over same-cluster half-window pairs of (S_p - S_q)^2, their number)`` per map (the
    number only with ``count``, else zeros).

    The same sums as shifted slices under autograd, with an explicit backward: the gradient
    ``2 (S_p - S_q)`` of each pair is added in place to p and subtracted at q, so the backward
    allocates one map-sized tensor instead of a zero-filled one per slice and offset, and nothing of
    the (2r+1)^2 / 2 offsets is kept for it (the differences are recomputed).
    """

    @staticmethod
    def forward(ctx, maps, labels, radius, count):
        h, w = maps.shape[-2:]
        total = maps.new_zeros(maps.shape[:2])
        pairs = maps.new_zeros(maps.shape[:2])
        for p, q in _windows(radius, h, w):
            same = labels[(..., *p)] == labels[(..., *q)]
            diff = (maps[(..., *p)] - maps[(..., *q)]) * same
            total += (diff * diff).sum(dim=(-2, -1))
            if count:
                pairs += same.sum(dim=(-2, -1))
        ctx.save_for_backward(maps, labels)
        ctx.radius = radius
        ctx.mark_non_differentiable(pairs)
        return total, pairs

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_total, _grad_pairs):
        maps, labels = ctx.saved_tensors
        h, w = maps.shape[-2:]
        grad = torch.zeros_like(maps)
        scale = (2 * grad_total)[..., None, None]
        for p, q in _windows(ctx.radius, h, w):
            same = labels[(..., *p)] == labels[(..., *q)]
            g = (maps[(..., *p)] - maps[(..., *q)]) * same * scale
            grad[(..., *p)] += g
            grad[(..., *q)] -= g
        return grad, None, None, None


def coherence_from_labels(maps: torch.Tensor, labels: torch.Tensor, radius: int = LossOptions.radius,
                          scale: str = LossOptions.sc_scale) -> torch.Tensor:
    """The (B, K) per-map values of eq. (2) for given cluster labels (0 = no cluster).

    ``scale="sum"``: the sums of eq. (2); ``"pair_mean"``: each divided by its number of ordered
    same-cluster pairs (at least 1).
    """
    total, pairs = _PairSums.apply(maps, _own_labels(labels), radius, scale == "pair_mean")
    if scale == "pair_mean":
        return total / pairs.clamp(min=1)  # the factor 2 of ordered pairs cancels
    return 2.0 * total


def spatial_coherence(maps: torch.Tensor, radius: int = LossOptions.radius, threshold=LossOptions.threshold,
                      background_cluster: bool = LossOptions.background_cluster, labels: torch.Tensor | None = None,
                      reduction: str = "mean", scale: str = LossOptions.sc_scale, *,
                      checked: bool = False) -> torch.Tensor:
    """L_SC of a (B, K, H, W) batch of (normalised) saliency maps.

    ``radius`` r in 1..7 gives the (2r+1) x (2r+1) window (3x3 .. 15x15; the paper's 9x9 is r=4).
    ``threshold`` ("otsu" | "mean" | number) and ``background_cluster`` choose the clusters (see
    :mod:`sibnet.losses.clusters`); ``labels`` (a (B, K, H, W) integer tensor, 0 = no cluster, equal
    labels = same cluster within a map) replaces that computation. ``scale``: see the module doc.
    ``checked``: the caller has checked ``maps`` already (:func:`check_maps` is skipped).
    """
    if not checked:
        check_maps(maps)
    check_reduction(reduction)
    check_option("sc_scale", scale, "scale")
    check_option("radius", radius)
    if labels is None:
        labels = clusters(maps, threshold=threshold, background_cluster=background_cluster, checked=True)
    else:
        if not isinstance(labels, torch.Tensor) or labels.shape != maps.shape:
            shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise ConfigError(f"labels: expected shape {tuple(maps.shape)} like the maps, got {shape}")
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ConfigError(f"labels: expected an integer tensor, got {labels.dtype}")
        labels = labels.to(maps.device)
    return reduce(coherence_from_labels(maps, labels, radius, scale), reduction)
