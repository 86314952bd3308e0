"""Per-image scores of how far an image lies from what a classifier saw in training.

Every score is oriented so that a HIGHER value means MORE SUSPICIOUS (less like the reference):

``cd``           class distinctiveness: the mean over class pairs of the cosine similarity of the K
                 normalised class maps' embeddings by the model's own encoder (L_CD of one image,
                 :func:`sibnet.losses.class_distinctiveness`); high = the classes' maps look alike.
``sc``           spatial incoherence: per map, the L_SC sum divided by its number of same-cluster
                 pixel pairs (:func:`sibnet.losses.spatial_coherence` with ``scale="pair_mean"``, a
                 value in [0, 1] whatever the image size), then the mean over the K maps; high = ragged maps.
``msp``          the negated maximum class probability (Hendrycks & Gimpel 2017). Multi-class: max
                 softmax. Multi-label: the mean over classes of max(p_k, 1 - p_k), the confidence of
                 each binary decision; the score is ``-msp`` (low confidence = suspicious).
``energy``       the energy (Liu et al. 2020); high = suspicious. Multi-class: ``-logsumexp(logits)``.
                 Multi-label: the sum over classes of the energy of each binary decision with its two
                 logits centred, ``-logsumexp(-f_k / 2, f_k / 2)``. A sigmoid output fixes the absent
                 class's logit at 0 by convention, and the energy, unlike the probabilities, depends on
                 that choice; centring makes it symmetric in present/absent (it then falls with |f_k|,
                 like the multi-label MSP). The uncentred joint energy ``-sum_k softplus(f_k)``
                 (Wang et al. 2021) calls images with confident NEGATIVE findings unfamiliar, which on
                 chest radiographs (mostly negative labels) inverts it: on a synthetic-trained
                 ResNet-18 its AUROC was 0.14 for errors vs correct images and 0.26 for NIH vs
                 synthetic images.
``mahalanobis``  the squared Mahalanobis distance of the penultimate features (Lee et al. 2018), the
                 covariance estimated by scikit-learn's Ledoit-Wolf shrinkage. Multi-class:
                 class-conditional means with one shared covariance of the class-centred features,
                 the distance to the nearest class mean. Multi-label: a single Gaussian of all
                 reference features (labels overlap, so there is no class partition).

:func:`image_scores` computes the raw ingredients of a batch in three passes, with the model in
eval mode (its mode is restored): one forward (logits and penultimate features), one saliency pass
(all K maps, :func:`sibnet.saliency.get`), one embedding pass of the B*K maps.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..losses import SIBNetLoss
from ..losses.coherence import spatial_coherence
from ..losses.distinctiveness import class_distinctiveness
from ..losses.normalise import normalise_maps
from ..models.embedding import logits_and_penultimate
from ..saliency import get as get_saliency

SCORES = ("cd", "sc", "cd+sc", "msp", "energy", "mahalanobis")
SALIENCY_SCORES = ("cd", "sc")


def msp_score(logits: torch.Tensor, task: str) -> torch.Tensor:
    """``-`` maximum class probability (B,) (see the module doc for multi-label)."""
    logits = logits.double()
    if task == "multiclass":
        return -torch.softmax(logits, 1).amax(1)
    p = torch.sigmoid(logits)
    return -torch.maximum(p, 1 - p).mean(1)


def energy_score(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Energy (B,): ``-logsumexp`` (multi-class) or the sum of centred binary energies (multi-label)."""
    logits = logits.double()
    if task == "multiclass":
        return -torch.logsumexp(logits, 1)
    half = logits / 2
    return -torch.logaddexp(-half, half).sum(1)


def fit_gaussian(features: np.ndarray, labels: np.ndarray | None = None, task: str = "multilabel") -> dict:
    """``{"means" (C, D), "precision" (D, D)}`` of the reference features (see the module doc).

    Multi-class with ``labels`` (one-hot or indices): one mean per class present, the shared
    covariance of the class-centred features; otherwise one mean. Ledoit-Wolf shrinkage.
    """
    from sklearn.covariance import LedoitWolf

    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ConfigError(f"mahalanobis: needs at least 2 reference feature vectors, got shape {x.shape}")
    if task == "multiclass" and labels is not None:
        y = np.asarray(labels)
        y = y.argmax(1) if y.ndim == 2 else y.astype(int)
        classes = np.unique(y)
        means = np.stack([x[y == c].mean(0) for c in classes])
        centred = x - means[np.searchsorted(classes, y)]
    else:
        means = x.mean(0, keepdims=True)
        centred = x - means
    lw = LedoitWolf(assume_centered=True).fit(centred)
    return {"means": means, "precision": lw.precision_}


def mahalanobis_score(features: np.ndarray, gaussian: dict) -> np.ndarray:
    """Squared Mahalanobis distance (N,) to the nearest of the Gaussian's means."""
    x = np.asarray(features, dtype=np.float64)
    means, prec = np.asarray(gaussian["means"]), np.asarray(gaussian["precision"])
    d = x[:, None, :] - means[None]  # (N, C, D)
    return np.einsum("ncd,de,nce->nc", d, prec, d).min(1)


def saliency_scores(model: nn.Module, x: torch.Tensor, method="gradcam", *, options: dict | None = None,
                    embed_size: int | None = 32, radius: int = 4, threshold="otsu") -> dict:
    """``{"cd": (B,), "sc": (B,), "maps": (B, K, H, W) normalised}`` of a batch (model in eval mode
    for the call, its mode restored)."""
    was = model.training
    model.eval()
    try:
        maps = get_saliency(method)(model, x, **(options or {})).detach().float()
        maps = normalise_maps(maps)
        sc = spatial_coherence(maps, radius=radius, threshold=threshold, reduction="none",
                               scale="pair_mean").mean(1)
        if maps.shape[1] < 2:
            cd = torch.zeros(maps.shape[0], device=maps.device)
        else:
            embed = SIBNetLoss(model, saliency=None, embed_size=embed_size).embed_fn(x)
            with torch.no_grad():
                cd = class_distinctiveness(maps, embed, reduction="none")
    finally:
        model.train(was)
    return {"cd": cd.detach().double().cpu(), "sc": sc.detach().double().cpu(), "maps": maps.cpu()}


def image_scores(model: nn.Module, x: torch.Tensor, task: str, *, method="gradcam", options: dict | None = None,
                 embed_size: int | None = 32, radius: int = 4, threshold="otsu", saliency: bool = True) -> dict:
    """Raw per-image ingredients of a batch: ``logits``, ``features``, ``msp``, ``energy`` and,
    with ``saliency``, ``cd``, ``sc``, ``maps`` (numpy arrays except ``maps``, a CPU tensor)."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits, feats = logits_and_penultimate(model, x)
    finally:
        model.train(was)
    logits = logits.float()
    out = {"logits": logits.cpu().numpy(), "features": feats.double().cpu().numpy(),
           "msp": msp_score(logits, task).cpu().numpy(), "energy": energy_score(logits, task).cpu().numpy()}
    if saliency:
        s = saliency_scores(model, x, method, options=options, embed_size=embed_size, radius=radius,
                            threshold=threshold)
        out.update(cd=s["cd"].numpy(), sc=s["sc"].numpy(), maps=s["maps"])
    return out


__all__ = ["SCORES", "SALIENCY_SCORES", "energy_score", "fit_gaussian", "image_scores", "mahalanobis_score",
           "msp_score", "saliency_scores"]
