"""Collapse of the class maps, watched during training.

SIBNet's terms have trivial minima: L_SC is zero for a flat map, and the class maps can become one
and the same map. At every epoch end the loop computes, on a fixed set of validation images (the
first ``COLLAPSE_IMAGES`` of the validation split, else of the training split), with the model in
eval mode and the loss's own saliency method and options:

``map_cos``    the mean pairwise cosine of the K normalised class maps of each image (1: identical);
``emb_cos``    the same for their embeddings by the model's encoder (what L_CD sees);
``flat_maps``  the share of (image, class) maps that are flat: the normalised map's standard
               deviation below ``FLAT_SD`` (a uniform or an all-zero map).

:func:`collapse_warning` turns them into a one-line warning when the maps have become identical
(``map_cos >= IDENTICAL_COS``) or mostly flat (``flat_maps >= FLAT_SHARE``).
"""

from __future__ import annotations

import math

import torch

from ..evaluation.distinctiveness import map_distinctiveness
from ..losses.normalise import normalise_maps
from ..saliency import takes_option
from ..saliency.resize import resize_linear

COLLAPSE_IMAGES = 32
IDENTICAL_COS = 0.99
FLAT_SD = 0.02
FLAT_SHARE = 0.5


def _images(dataset, n: int) -> torch.Tensor:
    return torch.stack([torch.as_tensor(dataset[i]["image"]) for i in range(min(n, len(dataset)))]).float()


def collapse_metrics(model: torch.nn.Module, loss_fn, dataset, device, n_images: int = COLLAPSE_IMAGES) -> dict:
    """``{"map_cos", "emb_cos", "flat_maps"}`` of the model's class maps (empty without saliency terms)."""
    method = getattr(loss_fn, "method", None)
    if method is None or dataset is None or len(dataset) == 0:
        return {}
    x = _images(dataset, n_images).to(device)
    was = model.training
    model.eval()
    try:
        maps = method(model, x, **getattr(loss_fn, "saliency_options", {})).detach()
    finally:
        model.train(was)
    if maps.shape[1] < 2:
        return {}
    if maps.shape[2:] != x.shape[2:]:
        maps = resize_linear(maps, x.shape[2:])
    flat = normalise_maps(maps).flatten(2).std(dim=2) < FLAT_SD
    alike = map_distinctiveness(model, maps.cpu(), x.cpu(), embed_size=getattr(loss_fn, "embed_size", 32),
                                device=device)
    return {"map_cos": alike["map_cosine"]["mean"], "emb_cos": alike["embedding_cosine"]["mean"],
            "flat_maps": float(flat.float().mean())}


def collapse_warning(metrics: dict, epoch: int, loss_fn=None) -> str | None:
    """A one-line warning when the class maps have collapsed, else None; its advice leaves out what the
    loss ``loss_fn`` (a :class:`~sibnet.losses.SIBNetLoss`) already does."""
    cos, flat = metrics.get("map_cos", math.nan), metrics.get("flat_maps", math.nan)
    if flat >= FLAT_SHARE:
        return (f"warning: epoch {epoch}: {flat:.0%} of the class maps are flat (uniform or zero) on "
                f"{COLLAPSE_IMAGES} validation images: the saliency terms are being met trivially "
                f"(try {_advice(loss_fn, 'a lower loss.lambda_sc')})")
    if cos >= IDENTICAL_COS:
        return (f"warning: epoch {epoch}: the class maps have become identical (mean pairwise cosine {cos:.3f} on "
                f"{COLLAPSE_IMAGES} validation images): L_CD has nothing to separate (try {_advice(loss_fn)})")
    return None


def _advice(loss_fn, *extra: str) -> str:
    """The remedies that the loss does not use yet, joined with "or"."""
    method = getattr(loss_fn, "method", None)
    balance = getattr(getattr(loss_fn, "balance", None), "mode", None)
    contrast = getattr(loss_fn, "saliency_options", {}).get("contrast", "none")
    tips = []
    if balance != "gradient":  # measured: GradCAM maps collapse under first_step, not under gradient
        tips.append("loss.balance=gradient")
    if method is None or not takes_option(method, "contrast"):
        tips.append("class-contrastive relevance maps (loss.saliency=deep_taylor loss.contrast=clrp)")
    elif contrast == "none":
        tips.append("loss.contrast=clrp")
    tips += list(extra)
    tips.append("fine-tuning a converged model instead (model.pretrained=RUN/best.pt optim.lr=1e-4)")
    return ", ".join(tips[:-1]) + " or " + tips[-1]
