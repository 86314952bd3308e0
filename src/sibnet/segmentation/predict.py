"""Prediction at the original image size, instance maps, and GlaS scores.

An image is resized to the network size ``(h, w)`` (as in training), the softmax class
probabilities are resized back to the image's original ``(H, W)`` (bilinear, half-pixel centres,
no antialiasing), a pixel is gland where the gland probability exceeds 0.5 (the argmax of the two
classes), and instances are the 8-connected components of the gland mask
(:func:`sibnet.evaluation.glas.label_instances`), components smaller than ``min_area`` pixels
dropped (default 0: none) and the rest numbered 1..n in scan order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..evaluation.glas import glas_dataset_scores, glas_scores, label_instances
from .data import Sample, prepare, save_instances_png

__all__ = ["predict_probabilities", "predict_samples", "instances_from_probability", "evaluate_predictions"]


@torch.no_grad()
def predict_probabilities(net, samples: list[Sample], size, normalize=None, batch_size: int = 4) -> list[np.ndarray]:
    """Gland probability ``(H, W)`` float32 of each sample, at its original size."""
    net.eval()
    out = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        x, _ = prepare(chunk, size, normalize)
        prob = torch.softmax(net(x), dim=1)
        for s, p in zip(chunk, prob):
            big = F.interpolate(p[None], size=s.image.shape[:2], mode="bilinear", align_corners=False)[0]
            out.append(big[1].numpy().astype(np.float32))
    return out


def instances_from_probability(prob: np.ndarray, min_area: int = 0) -> np.ndarray:
    inst = label_instances(prob > 0.5)
    if min_area > 0 and inst.max() > 0:
        areas = np.bincount(inst.ravel())
        keep = areas >= min_area
        keep[0] = False
        relabel = np.zeros(len(areas), np.int64)
        relabel[keep] = np.arange(1, keep.sum() + 1)
        inst = relabel[inst]
    return inst


def predict_samples(net, samples: list[Sample], size, normalize=None, *, min_area: int = 0,
                    out_dir=None, batch_size: int = 4) -> list[np.ndarray]:
    """Instance maps of ``samples`` at original size; written as ``OUT/<id>_pred.png`` when ``out_dir``."""
    probs = predict_probabilities(net, samples, size, normalize, batch_size)
    maps = [instances_from_probability(p, min_area) for p in probs]
    if out_dir is not None:
        for s, m in zip(samples, maps):
            save_instances_png(Path(out_dir) / f"{s.id}_pred.png", m)
    return maps


def evaluate_predictions(samples: list[Sample], predictions: list[np.ndarray]) -> dict:
    """:func:`glas_dataset_scores` of the pairs; its ``per_image`` entries gain ``id`` and ``grade``."""
    per = [glas_scores(p, s.instances) for s, p in zip(samples, predictions)]
    scores = glas_dataset_scores(per)
    for s, row in zip(samples, scores["per_image"]):
        row.update(id=s.id, grade=s.grade)
    return scores
