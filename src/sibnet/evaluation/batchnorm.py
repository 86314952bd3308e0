"""Re-estimating the BatchNorm statistics of a trained model with its final weights ("precise BN").

A model evaluated in eval mode normalises with its BatchNorm running statistics: exponential
averages (momentum 0.1) of the batch statistics seen during training, taken while the weights were
still moving. When the last steps changed the weights fast, or the network is very sensitive to
its normalisation, the stored averages no longer match what the final weights produce on the
training images, and eval-mode predictions suffer although nothing is wrong with the weights.
:func:`recalibrate_batchnorm` recomputes the statistics with the final weights: each BatchNorm
layer's running mean and variance are reset and re-estimated as the plain average of the batch
statistics over the given images (train-mode forward passes without gradients, by
``torch.optim.swa_utils.update_bn``). Nothing but the running statistics changes: parameters,
momenta, every module's training flag and the global random streams are as before.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader

from ..config import BN_STATS
from ..errors import SibnetError

__all__ = ["BN_STATS", "recalibrate_batchnorm"]


def recalibrate_batchnorm(model: nn.Module, dataset, *, batch_size: int = 16, seed: int = 0,
                          name: str = "dataset") -> int:
    """Re-estimate every BatchNorm layer's running statistics of ``model`` on the images of ``dataset``.

    ``dataset`` yields dicts with an ``"image"`` tensor (labels are not used, so unlabeled images
    serve too). The images are drawn in a shuffled order (``seed``) in batches of ``batch_size``, as
    in training; an incomplete last batch is dropped when at least one full batch exists, so every
    batch weighs the same. Returns the number of images used (0, and nothing changed, for a model
    without BatchNorm). ``name`` names the dataset in errors.
    """
    if not isinstance(batch_size, int) or batch_size < 2:
        raise SibnetError(f"recalibrate_batchnorm: batch_size must be an integer >= 2 (BatchNorm needs more "
                          f"than one image per batch), got {batch_size!r}")
    if not any(isinstance(m, _BatchNorm) for m in model.modules()):
        return 0
    n = len(dataset)
    if n < 2:
        raise SibnetError(f"recalibrate_batchnorm: {name} has {n} image(s); at least 2 are needed")
    drop_last = n >= batch_size
    loader = DataLoader(dataset, batch_size=min(batch_size, n), shuffle=True, drop_last=drop_last,
                        generator=torch.Generator().manual_seed(seed))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    used = 0

    def images():
        nonlocal used
        for batch in loader:
            if not isinstance(batch, dict) or "image" not in batch:
                raise SibnetError(f"recalibrate_batchnorm: {name} must yield dicts with an 'image' tensor")
            used += len(batch["image"])
            yield batch["image"]

    flags = [(m, m.training) for m in model.modules()]
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    saved = [(m, m.momentum, {k: b.detach().clone() for k, b in m._buffers.items() if b is not None}) for m in norms]
    try:
        # no_grad; resets, averages, restores the momenta. Train-mode layers that draw random numbers
        # (dropout) draw from a forked generator: the caller's random streams are left as they were.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            update_bn(images(), model, device=device)
    except BaseException:
        with torch.no_grad():  # a failed pass leaves the statistics and momenta as they were
            for m, momentum, buffers in saved:
                m.momentum = momentum
                for k, b in buffers.items():
                    m._buffers[k].copy_(b)
        raise
    finally:
        for m, flag in flags:  # update_bn restores only the top module's mode
            m.training = flag
    return used
