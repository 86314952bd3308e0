"""Keep a model's state exactly as the caller left it around a saliency or embedding pass.

What is preserved: every module's ``training`` flag, the running statistics of BatchNorm and
InstanceNorm (``running_mean``, ``running_var``, ``num_batches_tracked``: the very tensor objects
and values). Parameter ``.grad`` tensors are never touched because every pass uses
:func:`torch.autograd.grad`, and no hook is left registered because the methods intercept
functions with a :class:`TorchFunctionMode` (a user-given GradCAM layer gets a temporary hook that
is removed in a ``finally``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

_NORM_TYPES = (_BatchNorm, nn.modules.instancenorm._InstanceNorm)


_STAT_NAMES = ("running_mean", "running_var", "num_batches_tracked")


@contextlib.contextmanager
def preserve_state(model: nn.Module, *, norm_stats: bool = True) -> Iterator[None]:
    """Restore training flags on exit and keep normalisation statistics untouched.

    With ``norm_stats``, each normalisation module works on throwaway copies of its running
    buffers for the duration of the block, and gets its own tensors back afterwards: the
    originals are never written, so graphs that saved them stay valid.
    """
    flags = [(m, m.training) for m in model.modules()]
    swapped = []
    if norm_stats:
        for module in model.modules():
            if isinstance(module, _NORM_TYPES):
                for name in _STAT_NAMES:
                    buf = module._buffers.get(name)
                    if isinstance(buf, torch.Tensor):
                        swapped.append((module, name, buf))
                        module._buffers[name] = buf.detach().clone()
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag
        for module, name, buf in swapped:
            module._buffers[name] = buf


@contextlib.contextmanager
def eval_norm(model: nn.Module) -> Iterator[None]:
    """Run normalisation layers with their running statistics (eval semantics), updating nothing.

    Only normalisation modules are switched; dropout and everything else keep the caller's mode.
    The previous flags are restored on exit.
    """
    switched = [m for m in model.modules() if isinstance(m, _NORM_TYPES) and m.training]
    try:
        for module in switched:
            module.training = False
        yield
    finally:
        for module in switched:
            module.training = True
