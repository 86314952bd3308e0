"""The classification term L_WCE with class weights from training-set label counts (docs/design.md,
Losses: 'L_WCE').

- Multi-label tasks: :func:`weighted_bce`, binary cross-entropy on the logits with a per-class
  positive weight ``pos_weight = N_neg / N_pos`` (as ``torch.nn.BCEWithLogitsLoss``). Targets are
  1 (present), 0 (absent), values in between (soft labels), or ``nan`` (masked out, e.g. the
  U-Ignore policy: the entry contributes nothing). An uncertain label ``-1`` must be mapped by the
  dataset's policy before it reaches the loss; it raises :class:`DataError` here.
- Single-label tasks: :func:`weighted_ce`, cross-entropy with inverse-frequency class weights
  (as ``torch.nn.CrossEntropyLoss(weight=...)``: the mean divides by the summed weights of the
  targets). Targets are class indices (B,) or one-hot rows (B, K); a row with ``nan`` is ignored.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sibnet.errors import ConfigError, DataError
from sibnet.losses.distinctiveness import check_reduction, reduce

TASKS = ("multilabel", "multiclass")
IGNORE = -100


def _weights(weight, k: int, like: torch.Tensor, name: str) -> torch.Tensor | None:
    if weight is None:
        return None
    weight = torch.as_tensor(weight, dtype=like.dtype, device=like.device)
    if weight.shape != (k,):
        raise ConfigError(f"{name}: expected one weight per class, shape ({k},), got {tuple(weight.shape)}")
    if not (torch.isfinite(weight).all() and (weight >= 0).all()):
        raise ConfigError(f"{name}: weights must be finite and non-negative, got {weight.tolist()}")
    return weight


def weighted_bce(logits: torch.Tensor, targets: torch.Tensor, pos_weight=None,
                 reduction: str = "mean") -> torch.Tensor:
    """Masked, positively weighted binary cross-entropy of (B, K) logits and targets.

    ``pos_weight``: (K,) weights of the positive term (``None``: all 1). ``reduction``: "mean" over
    the observed (non-nan) entries (0 when none is observed), "sum", or "none" ((B, K), 0 where
    masked). Without nan targets, "mean" equals ``F.binary_cross_entropy_with_logits``.
    """
    check_reduction(reduction)
    if logits.ndim != 2 or targets.shape != logits.shape:
        raise ConfigError(f"targets: expected the logits' shape {tuple(logits.shape)} (B, K), "
                          f"got {tuple(targets.shape)}")
    targets = targets.to(logits.dtype)
    observed = ~torch.isnan(targets)
    if (targets == -1).any():
        raise DataError("targets: contain -1 (uncertain label); map it with an uncertainty policy "
                        "(e.g. U-Ones, U-Zeros, U-Ignore) in the dataset before the loss")
    if ((targets[observed] < 0) | (targets[observed] > 1)).any():
        raise DataError("targets: multi-label targets must lie in [0, 1] or be nan (masked)")
    weight = _weights(pos_weight, logits.shape[1], logits, "pos_weight")
    filled = torch.where(observed, targets, torch.zeros_like(targets))
    loss = F.binary_cross_entropy_with_logits(logits, filled, pos_weight=weight, reduction="none")
    loss = torch.where(observed, loss, torch.zeros_like(loss))
    if reduction == "mean":
        return loss.sum() / observed.sum().clamp_min(1)
    return reduce(loss, reduction)


def _class_indices(targets: torch.Tensor, k: int) -> torch.Tensor:
    """Class indices (B,) from indices or one-hot rows; ignored rows (nan) become ``IGNORE``."""
    if targets.ndim == 1 and not targets.is_floating_point():
        if ((targets < 0) | (targets >= k)).any():
            raise DataError(f"targets: class indices must lie in 0..{k - 1}")
        return targets.long()
    if targets.ndim != 2 or targets.shape[1] != k:
        raise ConfigError(f"targets: expected class indices (B,) or one-hot rows (B, {k}), "
                          f"got {tuple(targets.shape)} {targets.dtype}")
    ignored = torch.isnan(targets).any(dim=1)
    rows = targets[~ignored]
    if not (((rows == 0) | (rows == 1)).all() and (rows.sum(dim=1) == 1).all()):
        raise DataError("targets: single-label rows must be one-hot (one 1, the rest 0) or contain nan (ignored)")
    index = torch.where(ignored, torch.full_like(ignored, IGNORE, dtype=torch.long),
                        torch.nan_to_num(targets).argmax(dim=1))
    return index


def weighted_ce(logits: torch.Tensor, targets: torch.Tensor, class_weight=None,
                reduction: str = "mean") -> torch.Tensor:
    """Class-weighted cross-entropy of (B, K) logits; targets are indices (B,) or one-hot (B, K).

    Equals ``F.cross_entropy(logits, index, weight=class_weight, reduction=...)``: "mean" divides by
    the summed weights of the (non-ignored) targets; "none" gives (B,) with 0 for ignored rows.
    """
    check_reduction(reduction)
    if logits.ndim != 2:
        raise ConfigError(f"logits: expected shape (B, K), got {tuple(logits.shape)}")
    index = _class_indices(targets, logits.shape[1])
    if index.shape[0] != logits.shape[0]:
        raise ConfigError(f"targets: {index.shape[0]} rows for {logits.shape[0]} logits")
    weight = _weights(class_weight, logits.shape[1], logits, "class_weight")
    return F.cross_entropy(logits, index, weight=weight, ignore_index=IGNORE, reduction=reduction)


def class_weights_from_labels(labels, task: str = "multilabel",
                              class_names: Sequence[str] | None = None) -> torch.Tensor:
    """Class weights (K,) float32 from the training-set labels (N, K) (or indices (N,) for multiclass).

    - "multilabel": ``pos_weight[c] = N_neg[c] / N_pos[c]`` counting the entries equal to 1 and 0
      (nan entries ignored); a soft target t in (0, 1) (label smoothing such as U-LSR) counts as t
      of a positive and 1 - t of a negative, so ``N_pos = sum(t)`` and ``N_neg = sum(1 - t)``. A
      class without a positive or without a negative gets 1.0 and a warning (nothing to balance).
    - "multiclass": inverse frequency ``w[c] = (1 / n[c]) / mean_c'(1 / n[c'])`` over the classes that
      occur (mean 1 over them); rows with nan are ignored; a class that never occurs gets 1.0 and a
      warning.
    """
    if task not in TASKS:
        raise ConfigError(f"task: expected one of {', '.join(TASKS)}, got {task!r}")
    y = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.float64)
    if task == "multiclass" and y.ndim == 1:
        if len(y) and (np.isnan(y).any() or (y != np.round(y)).any() or y.min() < 0):
            raise DataError("labels: class indices must be non-negative integers")
        k = len(class_names) if class_names is not None else (int(y.max()) + 1 if len(y) else 0)
        if len(y) and y.max() >= k:
            raise DataError(f"labels: class index {int(y.max())} but only {k} class names")
        y = np.eye(k)[y.astype(int)] if k else y.reshape(0, 0)
    if y.ndim != 2:
        raise DataError(f"labels: expected an (N, K) label matrix, got shape {y.shape}")
    k = y.shape[1]
    names = list(class_names) if class_names is not None else [f"class {c}" for c in range(k)]
    if len(names) != k:
        raise ConfigError(f"class_names: {len(names)} names for {k} label columns")
    if (y == -1).any():
        raise DataError("labels: contain -1 (uncertain label); apply the uncertainty policy first")
    weights = np.ones(k)
    if task == "multilabel":
        bad = ~(np.isnan(y) | ((y >= 0) & (y <= 1)))
        if bad.any():
            raise DataError(f"labels: multi-label entries must lie in [0, 1] or be nan; column "
                            f"{int(np.argwhere(bad)[0, 1])} holds {y[bad][0]!r}")
        pos, neg = np.nansum(y, axis=0), np.nansum(1 - y, axis=0)
        for c in range(k):
            if pos[c] == 0 or neg[c] == 0:
                warnings.warn(f"{names[c]}: no {'positive' if pos[c] == 0 else 'negative'} label in the "
                              f"training labels; its positive weight is set to 1.0", stacklevel=2)
            else:
                weights[c] = neg[c] / pos[c]
    else:
        rows = y[~np.isnan(y).any(axis=1)]
        if not (((rows == 0) | (rows == 1)).all() and (rows.sum(axis=1) == 1).all()):
            raise DataError("labels: single-label rows must be one-hot (one 1, the rest 0) or contain nan")
        counts = rows.sum(axis=0)
        seen = counts > 0
        for absent in np.flatnonzero(~seen):
            warnings.warn(f"{names[absent]}: never occurs in the training labels; its weight is set to 1.0",
                          stacklevel=2)
        if seen.any():
            inverse = 1.0 / counts[seen]
            weights[seen] = inverse / inverse.mean()
    return torch.tensor(weights, dtype=torch.float32)
