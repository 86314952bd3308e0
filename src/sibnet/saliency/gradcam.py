"""Grad-CAM for all K classes from one forward and one batched backward pass.

``weights_c = mean_{spatial} d logit_c / dA``, ``map_c = ReLU(sum_k weights_ck A_k)``, then bilinear
upsampling to the input size (linear or trilinear for 1-D or 3-D inputs; for images, Captum's
``LayerGradCam(relu_attributions=True)`` followed by ``LayerAttribution.interpolate(..., "bilinear")``,
:func:`~sibnet.saliency.resize.resize_linear`). ``A`` is the feature map that feeds the
model's global pooling, found by watching the forward pass (module or functional pooling), or
the output of a layer given as a module or a dotted name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import SibnetError
from .batched import batched_vjp, start_relevance
from .resize import resize_linear

_ADAPTIVE = {F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
             F.adaptive_max_pool2d, F.adaptive_max_pool3d}
_WINDOW = {F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.max_pool1d, F.max_pool2d, F.max_pool3d}
_REDUCE = {torch.mean, torch.Tensor.mean, torch.amax, torch.Tensor.amax}


def _is_one(size) -> bool:
    sizes = size if isinstance(size, (tuple, list)) else (size,)
    return all(s == 1 for s in sizes)


def _global_pool_input(func, args, kwargs):
    """The input tensor if this call pools all spatial positions of a (B, C, *spatial) tensor."""
    if not args or not isinstance(args[0], torch.Tensor) or args[0].dim() < 3:
        return None
    x = args[0]
    spatial = x.shape[2:]
    if func in _ADAPTIVE:
        size = args[1] if len(args) > 1 else kwargs.get("output_size")
        return x if size is not None and _is_one(size) else None
    if func in _WINDOW:
        kernel = args[1] if len(args) > 1 else kwargs.get("kernel_size")
        kernel = tuple(kernel) if isinstance(kernel, (tuple, list)) else (kernel,) * len(spatial)
        return x if kernel == tuple(spatial) else None
    if func in _REDUCE:
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        if dim is None:
            return None
        dims = {d % x.dim() for d in (dim if isinstance(dim, (tuple, list)) else (dim,))}
        return x if dims == set(range(2, x.dim())) else None
    return None


class GlobalPoolWatcher(TorchFunctionMode):
    """Remembers the input of the last global pooling call of a forward pass."""

    def __init__(self):
        super().__init__()
        self.features = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        found = _global_pool_input(func, args, kwargs)
        if found is not None:
            self.features = found
        return func(*args, **kwargs)


def _resolve_layer(model: nn.Module, layer) -> nn.Module:
    if isinstance(layer, nn.Module):
        return layer
    try:
        return model.get_submodule(layer)
    except AttributeError as exc:
        raise SibnetError(f"layer={layer!r}: no such submodule in {type(model).__name__}") from exc


def features_forward(model: nn.Module, x: torch.Tensor, layer=None):
    """Run ``model(x)`` and return ``(logits, A)`` with ``A`` the Grad-CAM feature map."""
    if layer is None:
        watcher = GlobalPoolWatcher()
        with watcher:
            logits = model(x)
        if watcher.features is None:
            raise SibnetError(f"could not find a global pooling in {type(model).__name__}.forward; "
                              "pass layer= (a module or its dotted name) to choose the feature map")
        return logits, watcher.features
    captured: dict[str, torch.Tensor] = {}
    handle = _resolve_layer(model, layer).register_forward_hook(lambda m, i, o: captured.__setitem__("a", o))
    try:
        logits = model(x)
    finally:
        handle.remove()
    if "a" not in captured:
        raise SibnetError(f"layer={layer!r} was not called in the forward pass")
    return logits, captured["a"]


def gradcam_forward(model: nn.Module, x: torch.Tensor, *, targets=None, create_graph: bool = False, layer=None,
                    relu: bool = True, upsample: bool = True, loop: bool = False, weight_grad: bool = True):
    """``(logits, maps)``: maps (B, K', *input spatial) (or at the feature resolution).

    ``weight_grad=False`` treats the channel weights as constants (no second-order pass): the maps'
    gradient reaches the parameters only through the feature map, as with Captum's ``LayerGradCam``,
    which takes its gradients without ``create_graph`` (the published SIBNet training code).
    """
    leaf = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits, features = features_forward(model, leaf, layer)
        seeds = start_relevance(logits, targets)
        grads = batched_vjp(logits, features, seeds, create_graph=create_graph and weight_grad,
                            loop=loop)  # (K', B, C, *s)
    spatial = tuple(range(3, grads.dim()))
    weights = grads.mean(dim=spatial, keepdim=True)
    if not weight_grad:
        weights = weights.detach()
    cams = (weights * features.unsqueeze(0)).sum(dim=2)  # (K', B, *s)
    if relu:
        cams = cams.relu()
    cams = cams.transpose(0, 1)
    if upsample and cams.shape[2:] != x.shape[2:]:
        cams = resize_linear(cams, x.shape[2:])
    return logits, cams
