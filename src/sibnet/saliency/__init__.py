"""Exact, class-batched, differentiable saliency maps.

Every method has the signature ``method(model, x, *, targets=None, create_graph=False, **options)``
and returns a tensor (B, K, *spatial) with K the number of model outputs (or of ``targets``). All K
maps come from ONE forward and ONE vectorised backward pass. With ``create_graph=True`` the maps are
differentiable with respect to the model's parameters (second-order backpropagation).

A call leaves the model exactly as it found it: train/eval flags, normalisation statistics,
parameter ``.grad`` tensors and registered hooks. The model's mode is the caller's: in train mode,
BatchNorm uses batch statistics (without updating its running buffers).

Each built-in method also has ``method.forward_with_logits(model, x, ...) -> (logits, maps)``,
which keeps the forward's ordinary effects (a training forward updates BatchNorm statistics once)
so that a training loss can use the logits and the maps of the same pass.

``get(name)`` returns a method by name; ``available()`` lists the names; any callable with the same
signature can be used wherever a name is accepted, and ``register(name, fn)`` adds one.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import torch
from torch import nn

from ..errors import ConfigError, SibnetError
from .contrast import CONTRASTS
from .gradcam import gradcam_forward
from .gradient import input_x_gradient_forward
from .relevance import relevance_forward
from .rules import RECOMPUTE_MODES, AlphaBeta, Epsilon, ZPlus
from .state import eval_norm, preserve_state

SaliencyMethod = Callable[..., torch.Tensor]
_REGISTRY: dict[str, SaliencyMethod] = {}


def _public(name: str, forward: Callable, doc: str) -> SaliencyMethod:
    @functools.wraps(forward)
    def method(model: nn.Module, x: torch.Tensor, *, targets=None, create_graph: bool = False, **options):
        _check_input(model, x)
        with preserve_state(model):
            return forward(model, x, targets=targets, create_graph=create_graph, **options)[1]

    method.__name__ = method.__qualname__ = name
    method.__doc__ = doc
    # a function attribute, which mypy does not model on the functools.wraps result
    setattr(method, "forward_with_logits", forward)
    _REGISTRY[name] = method
    return method


def _check_input(model, x):
    if not isinstance(model, nn.Module):
        raise SibnetError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not torch.is_tensor(x) or x.dim() < 3 or not x.is_floating_point():
        raise SibnetError(f"x must be a floating-point tensor (B, C, *spatial), got "
                          f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")


def _deep_taylor_forward(model, x, *, targets=None, create_graph=False, stabilizer=1e-12, start="one_hot",
                         loop=False, trace=None, recompute="none", contrast="none"):
    rule = ZPlus(stabilizer=stabilizer, norm="pass", recompute=recompute)
    return relevance_forward(model, x, rule, targets=targets, create_graph=create_graph, start=start, loop=loop,
                             trace=trace, contrast=contrast)


def _lrp_epsilon_forward(model, x, *, targets=None, create_graph=False, eps=1e-6, start="one_hot", loop=False,
                         trace=None, recompute="none", contrast="none"):
    rule = Epsilon(eps=eps, norm="affine", recompute=recompute)
    return relevance_forward(model, x, rule, targets=targets, create_graph=create_graph, start=start, loop=loop,
                             trace=trace, contrast=contrast)


def _lrp_alpha_beta_forward(model, x, *, targets=None, create_graph=False, alpha=2.0, beta=1.0, stabilizer=1e-6,
                            start="one_hot", loop=False, trace=None, recompute="none", contrast="none"):
    if alpha - beta != 1 or beta < 0:
        raise SibnetError(f"lrp_alpha_beta needs alpha - beta = 1 and beta >= 0, got alpha={alpha}, beta={beta}")
    rule = AlphaBeta(alpha=alpha, beta=beta, stabilizer=stabilizer, norm="affine", recompute=recompute)
    return relevance_forward(model, x, rule, targets=targets, create_graph=create_graph, start=start, loop=loop,
                             trace=trace, contrast=contrast)


gradcam = _public("gradcam", gradcam_forward, """Grad-CAM maps (B, K, *spatial) upsampled bilinearly to the input.

Options: ``layer`` (module or dotted name; default: the feature map feeding the global pooling),
``relu`` (default True), ``upsample`` (default True; False keeps the feature-map resolution), ``weight_grad``
(default True; False: the channel weights are constants in training, as in Captum and the published SIBNet code).""")
deep_taylor = _public("deep_taylor", _deep_taylor_forward, """Deep Taylor decomposition (z+ rule, biases ignored).

iNNvestigate ``deep_taylor`` semantics: z+ on every convolution and linear layer, BatchNorm passed
through, plain gradient through ReLU and pooling, concatenation splits, residual additions split in
proportion to the summands. Options: ``stabilizer`` (1e-12), ``start`` ("one_hot" or "relu_logit"),
``recompute`` (what the backward of ``create_graph=True`` maps recomputes instead of keeping:
"none" (default: keep everything, least time), "pointwise" or "all" (least memory); see
:class:`~sibnet.saliency.rules.RelevanceRule`), ``contrast`` ("none", "clrp" or "sglrp": class-contrastive maps from
the same pass, :mod:`sibnet.saliency.contrast`).""")
lrp_epsilon = _public("lrp_epsilon", _lrp_epsilon_forward,
                      """LRP-epsilon (biases included; BatchNorm as an affine layer).

Options: ``eps`` (1e-6), ``start``, ``recompute``, ``contrast`` (as deep_taylor).""")
lrp_alpha_beta = _public("lrp_alpha_beta", _lrp_alpha_beta_forward, """LRP-alpha-beta (default alpha=2, beta=1).

Options: ``alpha``, ``beta`` (alpha - beta = 1), ``stabilizer``, ``start``, ``recompute``, ``contrast``.""")
input_x_gradient = _public("input_x_gradient", input_x_gradient_forward,
                           """Input x gradient, summed over input channels.""")


def available() -> list[str]:
    """Names of the registered saliency methods."""
    return sorted(_REGISTRY)


def get(method: str | SaliencyMethod) -> SaliencyMethod:
    """A saliency method by name, or the callable itself."""
    if callable(method):
        return method
    try:
        return _REGISTRY[method]
    except KeyError:
        raise SibnetError(f"unknown saliency method {method!r}; available: {', '.join(available())}") from None


_CHOICES = {"recompute": RECOMPUTE_MODES, "start": ("one_hot", "relu_logit"), "contrast": CONTRASTS}
_NOT_OPTIONS = {"model", "x", "targets", "create_graph", "loop", "trace"}


def check_options(method: str | SaliencyMethod, options: dict | None) -> None:
    """Raise :class:`~sibnet.errors.ConfigError` naming an option the built-in ``method`` does not
    take, or a value outside an option's choices (user callables are not checked)."""
    fn = get(method)
    forward = getattr(fn, "forward_with_logits", None)
    if not options or forward is None:
        return
    params = inspect.signature(forward).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [p for p in params if p not in _NOT_OPTIONS]
    for key, value in options.items():
        if key not in accepted:
            raise ConfigError(f"saliency option {key!r} is not an option of {fn.__name__}; its options: "
                              f"{', '.join(accepted) or 'none'}")
        if key in _CHOICES and value not in _CHOICES[key]:
            raise ConfigError(f"saliency option {key}={value!r}: choose one of {', '.join(_CHOICES[key])}")


def takes_option(method: str | SaliencyMethod, option: str) -> bool:
    """Whether the built-in ``method`` has the keyword option ``option`` (False for user callables)."""
    forward = getattr(get(method), "forward_with_logits", None)
    return forward is not None and option in inspect.signature(forward).parameters


def describe(method: str, options: dict | None = None, for_files: bool = False) -> str:
    """``deep_taylor`` or ``deep_taylor contrast=clrp``: a method and its options, as tables and figures name
    maps; ``for_files``: ``deep_taylor-contrast-clrp``, as file names carry them."""
    sep, eq = ("-", "-") if for_files else (" ", "=")
    return method + "".join(f"{sep}{k}{eq}{v}" for k, v in sorted((options or {}).items()))


def register(name: str, method: SaliencyMethod) -> SaliencyMethod:
    """Make a user's method available by name (signature as the built-in methods)."""
    if not callable(method):
        raise SibnetError(f"saliency method {name!r} must be callable")
    _REGISTRY[name] = method
    return method


__all__ = ["available", "check_options", "describe", "takes_option", "deep_taylor", "eval_norm", "get", "gradcam",
           "input_x_gradient", "lrp_alpha_beta", "lrp_epsilon", "preserve_state", "register"]
