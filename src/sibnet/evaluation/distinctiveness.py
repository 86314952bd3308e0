"""How alike the K class maps of an image are: the quantity L_CD trains down, as a diagnostic.

For each image, with every map normalised as before the losses (ReLU, divided by its maximum;
docs/design.md, Losses: 'Normalisation'):

``map_cosine``        the mean over class pairs of the cosine similarity of the two maps themselves
                      (flattened pixels);
``embedding_cosine``  the mean over class pairs of the cosine similarity of their embeddings by the
                      model's own encoder (pooled penultimate features, BatchNorm in eval mode, maps
                      resized to ``embed_size`` as in training): L_CD (docs/design.md, Losses: 'L_CD').

1 means the classes' maps are alike (for L_CD: alike to the encoder), 0 unrelated. Both are reported
as the mean and sd over images. A map that is zero everywhere has cosine 0 with every other map
(the convention of :func:`sibnet.losses.class_distinctiveness`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import SibnetError
from ..losses import SIBNetLoss
from ..losses.distinctiveness import pairwise_cosine
from ..losses.normalise import normalise_maps


def _mean_sd(values: torch.Tensor) -> dict:
    v = values.double()
    return {"mean": float(v.mean()), "sd": float(v.std(unbiased=True)) if v.numel() > 1 else float("nan")}


@torch.no_grad()
def map_distinctiveness(model: nn.Module, maps, images, *, embed_size: int | None = 32, batch_size: int = 16,
                        device: str | torch.device = "cpu") -> dict:
    """``{"map_cosine": {mean, sd}, "embedding_cosine": {mean, sd}, "n_images", "n_classes",
    "embed_size"}`` for (n, K, H, W) ``maps`` of the (n, C, H, W) ``images`` they explain."""
    maps = torch.as_tensor(np.asarray(maps), dtype=torch.float32)
    images = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    if maps.ndim != 4 or images.ndim != 4 or maps.shape[0] != images.shape[0]:
        raise SibnetError(f"map_distinctiveness: expected (n, K, H, W) maps and (n, C, H, W) images, got "
                          f"{tuple(maps.shape)} and {tuple(images.shape)}")
    n, k = maps.shape[:2]
    if n == 0 or k < 2:
        raise SibnetError(f"map_distinctiveness: needs at least one image and two classes, got {n} images, {k} "
                          "classes")
    normalised = normalise_maps(maps)
    map_cos = pairwise_cosine(normalised.flatten(2)).mean(dim=1)
    loss = SIBNetLoss(model, saliency=None, embed_size=embed_size)
    was = model.training
    model.eval()
    emb_cos = []
    try:
        for start in range(0, n, batch_size):
            x = images[start:start + batch_size].to(device)
            part = normalised[start:start + batch_size].to(device)
            z = loss.embed_fn(x)(part.flatten(0, 1)).reshape(part.shape[0], k, -1)
            emb_cos.append(pairwise_cosine(z.float()).mean(dim=1).cpu())
    finally:
        model.train(was)
    return {"map_cosine": _mean_sd(map_cos), "embedding_cosine": _mean_sd(torch.cat(emb_cos)), "n_images": int(n),
            "n_classes": int(k), "embed_size": embed_size}
