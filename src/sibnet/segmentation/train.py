"""Training of a segmentation network on in-memory tensors, and its checkpoint; a U-Net on the
encoder of a classifier checkpoint (:func:`unet_from_checkpoint`).

Loss: MONAI ``DiceCELoss(to_onehot_y=True, softmax=True, weight=w)``: class-weighted cross
entropy plus (class-weighted) soft Dice over background and gland, both with weight 1; ``w`` are
the inverse-frequency pixel weights of :func:`sibnet.segmentation.data.class_weights`.
Optimiser: Adam (default lr 1e-3, betas 0.93/0.999 as the classifiers) over the parameters that
require gradients (the decoder only when the encoder is frozen), constant learning rate, a fixed
number of epochs (no early stopping, so every model gets the same schedule).
Data order: epoch ``e`` shuffles with a generator seeded ``(seed, e)``; augmentation (optional)
flips each image horizontally and/or vertically with probability 1/2 each, drawn from the same
generator; the model's initialisation uses ``torch.manual_seed(seed)`` in the caller.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch
import torch.nn as nn

from ..errors import ConfigError, DataError, SibnetError
from ..models.unet import BACKBONES, DEFAULT_DECODER, EncoderUNet, build_unet
from ..training.checkpoint import FORMAT, VERSION, load_checkpoint, load_model_from_checkpoint, save_checkpoint

__all__ = ["train_segmenter", "segmentation_loss", "save_segmenter", "load_segmenter", "unet_from_checkpoint"]


def segmentation_loss(weights: torch.Tensor | None = None) -> nn.Module:
    from monai.losses import DiceCELoss

    return DiceCELoss(to_onehot_y=True, softmax=True, weight=weights)


def _flip(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator):
    fh = torch.rand(x.shape[0], generator=gen) < 0.5
    fv = torch.rand(x.shape[0], generator=gen) < 0.5
    x, y = x.clone(), y.clone()
    x[fh], y[fh] = x[fh].flip(-1), y[fh].flip(-1)
    x[fv], y[fv] = x[fv].flip(-2), y[fv].flip(-2)
    return x, y


def train_segmenter(net: nn.Module, images: torch.Tensor, masks: torch.Tensor, *, epochs: int,
                    batch_size: int = 4, lr: float = 1e-3, betas=(0.93, 0.999), seed: int = 0,
                    weights: torch.Tensor | None = None, augment: bool = True,
                    log: Callable[[str], None] | None = None) -> list[dict]:
    """Train ``net`` in place; returns one ``{"epoch", "loss", "seconds"}`` per epoch.

    ``images`` (N, C, h, w) float, ``masks`` (N, h, w) int64 class indices.
    """
    if (images.ndim != 4 or masks.ndim != 3 or images.shape[0] != masks.shape[0]
            or images.shape[-2:] != masks.shape[-2:]):
        raise DataError(f"images (N, C, h, w) and masks (N, h, w) must agree, got {tuple(images.shape)} and "
                        f"{tuple(masks.shape)}")
    if int(epochs) < 1 or int(batch_size) < 1 or not lr > 0:
        raise ConfigError(f"epochs and batch_size must be >= 1 and lr > 0, got {epochs}, {batch_size}, {lr}")
    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the network has no trainable parameters")
    opt = torch.optim.Adam(params, lr=lr, betas=tuple(betas))
    loss_fn = segmentation_loss(weights)
    n = images.shape[0]
    history = []
    net.train()
    for epoch in range(1, int(epochs) + 1):
        gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + epoch)
        order = torch.randperm(n, generator=gen)
        t0, total = time.perf_counter(), 0.0
        for start in range(0, n, int(batch_size)):
            idx = order[start:start + int(batch_size)]
            x, y = images[idx], masks[idx]
            if augment:
                x, y = _flip(x, y, gen)
            loss = loss_fn(net(x), y[:, None])
            if not math.isfinite(loss.item()):
                raise DataError(f"segmentation loss is not finite at epoch {epoch}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        rec = {"epoch": epoch, "loss": total / n, "seconds": time.perf_counter() - t0}
        history.append(rec)
        if log is not None:
            log(f"epoch {epoch}/{epochs}  loss {rec['loss']:.4f}  {rec['seconds']:.1f} s")
    net.eval()
    return history


def save_segmenter(path, net, meta: dict, history: list[dict] | None = None):
    """Checkpoint of a U-Net (:mod:`sibnet.training.checkpoint` format; read with weights_only)."""
    return save_checkpoint(path, {"format": FORMAT, "version": VERSION, "model": net.state_dict(),
                                  "meta": dict(meta), "history": list(history or [])})


def load_segmenter(path):
    """``(EncoderUNet in eval mode, meta)`` from a checkpoint written by :func:`save_segmenter`."""
    ckpt = load_checkpoint(path)
    meta = ckpt["meta"]
    if meta.get("task") != "segmentation" or "backbone" not in meta:
        raise SibnetError(f"{path}: not a segmentation checkpoint (meta task {meta.get('task')!r}); "
                          "classifier checkpoints go to --encoder-checkpoint")
    net = build_unet(meta["backbone"], int(meta["in_channels"]), out_channels=int(meta["num_classes"]),
                     freeze_encoder=bool(meta.get("freeze_encoder", True)),
                     decoder_channels=tuple(meta["decoder_channels"]))
    try:
        net.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise SibnetError(f"{path}: weights do not fit the U-Net: {' '.join(str(exc).split())[:300]}") from None
    net.eval()
    return net, dict(meta)


def unet_from_checkpoint(path, *, out_channels: int = 2, freeze_encoder: bool = True,
                         decoder_channels=DEFAULT_DECODER) -> tuple[EncoderUNet, dict]:
    """A U-Net whose encoder is the classifier stored in checkpoint ``path`` (from ``sibnet train``);
    returns ``(unet, the classifier's meta)``."""
    classifier, meta = load_model_from_checkpoint(path)
    name = str(meta["model_name"]).lower()
    if name not in BACKBONES:
        raise ConfigError(f"{path}: classifier {name!r} cannot serve as a U-Net encoder")
    net = EncoderUNet(classifier, name, int(meta["in_channels"]), out_channels=out_channels,
                      freeze_encoder=freeze_encoder, decoder_channels=decoder_channels)
    return net, meta
