"""Clusters of saliency maps for the spatial-coherence term (docs/design.md, Losses: 'L_SC').

A cluster is a connected component (8- or 4-connectivity) of the pixels of one map that lie
strictly above the map's threshold (foreground = ``map > t``, as scikit-image binarises with
``threshold_otsu``). Everything here works on detached maps and returns no gradient.

Threshold methods:
- ``"otsu"``: :func:`otsu_threshold`, equal to ``skimage.filters.threshold_otsu(map)`` (256 bins
  over the map's own [min, max] range, threshold = the centre of the best bin). A constant map has
  threshold = its value, hence no foreground.
- ``"mean"``: the map's mean (a constant map has no foreground either).
- a number: the same fixed threshold for every map.

Labels: a LongTensor of the maps' shape; 0 = no cluster; clusters are numbered 1..n over the whole
batch, so a label is unique within its map and across maps. With ``background_cluster=True`` the
below-threshold pixels of each map form ONE extra cluster of that map (not split into connected
components), following the reading "background as one more cluster".

Two labelling paths that give the same partition: ``scipy.ndimage.label`` on the whole
(B*K, H, W) stack at once (the default for CPU tensors), and a torch path for GPU tensors
(max-pool label propagation with pointer jumping, see :func:`torch_components`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from sibnet.errors import ConfigError
from sibnet.loss_options import LossOptions, check_option
from sibnet.losses.normalise import check_maps

NBINS = 256


def _flat(maps: torch.Tensor) -> torch.Tensor:
    return maps.detach().reshape(-1, maps.shape[-2] * maps.shape[-1])


def otsu_threshold(maps: torch.Tensor, *, checked: bool = False) -> torch.Tensor:
    """Per-map Otsu thresholds (B, K) of a (B, K, H, W) tensor, batched on the maps' device.

    Reproduces ``skimage.filters.threshold_otsu(map, nbins=256)`` (scikit-image 0.26) step by
    step in the maps' dtype: ``np.histogram`` binning over [min, max] (``np.linspace`` edges, the
    same index correction at the edges), float32 counts, cumulative class weights and means, the
    first arg-max of the between-class variance, its bin centre. Constant maps return their value.
    ``checked``: the caller has checked ``maps`` already (:func:`check_maps` is skipped).
    """
    if not checked:
        check_maps(maps)
    x = _flat(maps)
    n, p = x.shape
    if not torch.isfinite(x).all():
        raise ConfigError("maps: contain NaN or inf; cannot threshold them")
    lo = x.amin(dim=1, keepdim=True)
    hi = x.amax(dim=1, keepdim=True)
    constant = (lo == hi).squeeze(1)
    # np.histogram: equal lo and hi are expanded by 0.5 (only reached for constant maps here)
    first = torch.where(lo == hi, lo - 0.5, lo)
    last = torch.where(lo == hi, hi + 0.5, hi)
    # np.linspace(first, last, 257) in the maps' dtype: arange * step + start, last edge = stop
    step = (last - first) / NBINS
    steps = torch.arange(NBINS + 1, dtype=x.dtype, device=x.device)
    edges = steps * step + first
    edges[:, -1] = last.squeeze(1)
    # bin indices as np.histogram computes them, including the one-ulp corrections
    idx = (((x - first) / (last - first)) * NBINS).to(torch.long)
    idx = torch.where(idx == NBINS, idx - 1, idx)
    idx = idx - (x < torch.gather(edges, 1, idx)).long()
    idx = idx + ((x >= torch.gather(edges, 1, idx + 1)) & (idx != NBINS - 1)).long()
    offsets = torch.arange(n, device=x.device).unsqueeze(1) * NBINS
    counts = torch.bincount((idx + offsets).reshape(-1), minlength=n * NBINS).reshape(n, NBINS)
    counts = counts.to(torch.float32)
    centres = (edges[:, :-1] + edges[:, 1:]) / 2.0
    # skimage: counts are float32; their product with the centres takes numpy's promoted dtype
    work = torch.promote_types(torch.float32, x.dtype)
    counts = counts.to(work)
    centres_w = centres.to(work)
    weight1 = torch.cumsum(counts, dim=1)
    weight2 = torch.flip(torch.cumsum(torch.flip(counts, [1]), dim=1), [1])
    mass = counts * centres_w
    mean1 = torch.cumsum(mass, dim=1) / weight1
    mean2 = torch.flip(torch.cumsum(torch.flip(mass, [1]), dim=1) / torch.flip(weight2, [1]), [1])
    variance = weight1[:, :-1] * weight2[:, 1:] * (mean1[:, :-1] - mean2[:, 1:]) ** 2
    best = torch.argmax(variance, dim=1, keepdim=True)
    threshold = torch.gather(centres, 1, best).squeeze(1)
    threshold = torch.where(constant, lo.squeeze(1), threshold)
    return threshold.reshape(maps.shape[:2])


def thresholds(maps: torch.Tensor, threshold=LossOptions.threshold, *, checked: bool = False) -> torch.Tensor:
    """The (B, K) thresholds of a (B, K, H, W) batch for ``threshold`` = "otsu" | "mean" | number.
    ``checked``: the caller has checked ``maps`` already."""
    if not checked:
        check_maps(maps)
    check_option("threshold", threshold)
    if threshold == "otsu":
        return otsu_threshold(maps, checked=True)
    if threshold == "mean":
        return maps.detach().mean(dim=(-2, -1))
    return torch.full(maps.shape[:2], float(threshold), dtype=maps.dtype, device=maps.device)


def _structure(connectivity: int) -> np.ndarray:
    if connectivity not in (4, 8):
        raise ConfigError(f"connectivity: expected 4 or 8, got {connectivity!r}")
    plane = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = plane  # links nothing across maps
    return structure


def scipy_components(foreground: torch.Tensor, connectivity: int = 8) -> torch.Tensor:
    """Connected components of a boolean (N, H, W) stack with one ``scipy.ndimage.label`` call."""
    structure = _structure(connectivity)
    labels, _ = ndimage.label(foreground.detach().cpu().numpy(), structure=structure)
    return torch.from_numpy(labels.astype(np.int64, copy=False)).to(foreground.device)


def _run_max(lab: torch.Tensor, fg: torch.Tensor) -> torch.Tensor:
    """Give every horizontal run of foreground pixels of (N, H, W) ``lab`` the run's largest label."""
    prev = F.pad(fg[..., :-1], (1, 0))
    start = (fg & ~prev).reshape(-1)
    run = torch.cumsum(start, 0) * fg.reshape(-1)  # 0 for background pixels
    best = torch.zeros(int(start.sum()) + 1, dtype=lab.dtype, device=lab.device)
    best = best.scatter_reduce(0, run, lab.reshape(-1), reduce="amax", include_self=True)
    return best[run].reshape(lab.shape)


def torch_components(foreground: torch.Tensor, connectivity: int = 8, check_every: int = 2) -> torch.Tensor:
    """Connected components of a boolean (N, H, W) stack in torch (meant for GPU tensors).

    Every foreground pixel starts with its own index within its map (1-based). Each round spreads
    the largest label of every component: along whole horizontal and vertical runs of foreground
    pixels at once (a segmented maximum), to the 3x3 neighbourhood (or the 4-neighbour cross) by
    max-pooling restricted to the foreground, and by pointer jumping (a pixel takes the label held
    at the pixel its label names, which lies in the same component). Rounds repeat until one changes
    nothing: every component then carries its largest pixel index. Returns labels numbered 1..n
    over the stack, 0 = background.
    """
    _structure(connectivity)
    fg = foreground.detach().bool()
    n, h, w = fg.shape
    if fg.numel() == 0:
        return torch.zeros(fg.shape, dtype=torch.long, device=fg.device)
    dtype = torch.float32 if h * w < 2**24 else torch.float64
    index = torch.arange(1, h * w + 1, device=fg.device, dtype=dtype).reshape(1, h, w)
    mask = fg.to(dtype).unsqueeze(1)
    lab = index * fg
    fg_t = fg.transpose(1, 2).contiguous()
    flat_fg = fg.reshape(n, h * w)

    def spread(z: torch.Tensor) -> torch.Tensor:
        z = z.unsqueeze(1)
        if connectivity == 8:
            pooled = F.max_pool2d(z, 3, stride=1, padding=1)
        else:
            padded = F.pad(z, (1, 1, 1, 1))
            pooled = torch.stack([z, padded[..., :-2, 1:-1], padded[..., 2:, 1:-1],
                                  padded[..., 1:-1, :-2], padded[..., 1:-1, 2:]]).amax(0)
        return (pooled * mask).squeeze(1)

    def jump(z: torch.Tensor) -> torch.Tensor:
        flat = z.reshape(n, h * w)
        target = (flat.long() - 1).clamp_min(0)
        hop = torch.gather(flat, 1, target)
        return torch.where(flat_fg, torch.maximum(flat, hop), flat).reshape(z.shape)

    while True:
        before = lab
        for _ in range(check_every):
            lab = _run_max(lab, fg)
            lab = _run_max(lab.transpose(1, 2).contiguous(), fg_t).transpose(1, 2)
            lab = jump(jump(spread(lab)))
        if torch.equal(lab, before):
            break
    lab = lab.long()
    lab = lab + (lab > 0) * (torch.arange(n, device=fg.device) * (h * w)).reshape(n, 1, 1)
    return _compact(lab)


def _compact(labels: torch.Tensor) -> torch.Tensor:
    """Renumber labels to 1..n in increasing order of the old label, keeping 0 as 0."""
    unique, inverse = torch.unique(labels, return_inverse=True)
    if unique.numel() and unique[0] == 0:
        return inverse
    return inverse + 1


def clusters(maps: torch.Tensor, threshold=LossOptions.threshold, connectivity: int = 8,
             background_cluster: bool = LossOptions.background_cluster, method: str = "auto", *,
             checked: bool = False) -> torch.Tensor:
    """Cluster labels (B, K, H, W) of a batch of maps (computed on the detached maps).

    ``method``: "auto" (scipy for CPU tensors, torch otherwise), "scipy" or "torch". See the module
    docstring for the threshold methods and the label numbering. ``checked``: the caller has
    checked ``maps`` already (:func:`check_maps` is skipped).
    """
    if not checked:
        check_maps(maps)
    if method not in ("auto", "scipy", "torch"):
        raise ConfigError(f"method: expected 'auto', 'scipy' or 'torch', got {method!r}")
    _structure(connectivity)
    b, k, h, w = maps.shape
    t = thresholds(maps, threshold, checked=True)
    foreground = maps.detach() > t[..., None, None]
    stack = foreground.reshape(b * k, h, w)
    if method == "scipy" or (method == "auto" and maps.device.type == "cpu"):
        labels = scipy_components(stack, connectivity)
    else:
        labels = torch_components(stack, connectivity)
    if background_cluster:
        background = ~stack
        start = labels.max() if labels.numel() else 0
        extra = start + 1 + torch.arange(b * k, device=labels.device).reshape(-1, 1, 1)
        labels = _compact(torch.where(background, extra, labels))
    return labels.reshape(b, k, h, w)
