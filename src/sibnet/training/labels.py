"""The label matrix of a training set and the class weights counted on it.

:func:`dataset_class_weights` is what ``loss.class_weight: true`` trains with
(:func:`sibnet.losses.classification.class_weights_from_labels` of :func:`dataset_labels`).
"""

from __future__ import annotations

import numpy as np
import torch

from ..losses.classification import class_weights_from_labels


def dataset_labels(dataset) -> np.ndarray:
    """(N, K) label matrix for the class weights: the dataset's ``.class_weight_labels`` (e.g. the
    hard labels of soft targets) or ``.labels`` when it has one, else read item by item."""
    labels = getattr(dataset, "class_weight_labels", None)
    if labels is None:
        labels = getattr(dataset, "labels", None)
    if labels is not None:
        return np.asarray(labels, dtype=np.float32)
    return np.stack([np.asarray(dataset[i]["label"], dtype=np.float32) for i in range(len(dataset))])


def dataset_class_weights(dataset) -> torch.Tensor:
    """Class weights (K,) float32 of a training set (its ``.info`` gives the task and the class
    names): positive weights N_neg/N_pos (multi-label) or inverse frequencies (single-label)."""
    info = dataset.info
    return class_weights_from_labels(dataset_labels(dataset), info.task, class_names=info.class_names)
