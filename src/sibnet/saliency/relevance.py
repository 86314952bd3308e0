"""Relevance methods (deep Taylor, LRP-epsilon, LRP-alpha-beta) for unmodified PyTorch models.

During one forward pass a :class:`~torch.overrides.TorchFunctionMode` (:class:`RelevanceMode`)
wraps every ``F.linear``/``F.conv{1,2,3}d`` output, every ``F.batch_norm`` output and every residual
addition of two activations in a rule Function (:mod:`sibnet.saliency.rules`). Everything else
(ReLU, pooling, concatenation, reshaping, dropout) keeps its plain gradient, as iNNvestigate and
Zennit do; ReLU, concatenation and max pooling are wrapped too (:mod:`sibnet.saliency.memory`),
only so that differentiating their backward again (``create_graph=True``) builds no full-size
zero-filled tensors, so that max pooling scatters the relevance of all classes at once, and so that
a ReLU whose every consumer multiplies its relevance by the ReLU's output (a linear layer, a
residual addition) skips its mask, which changes nothing there
(:class:`~sibnet.saliency.memory.ReluUse`). One vectorised backward pass seeded with K one-hot
vectors then gives all K maps. Every wrapped Function holds the pass's
:class:`~sibnet.saliency.switch.RelevanceSwitch`, which that backward pass switches on.

Because functions, not modules, are intercepted, functional calls inside ``forward`` and in-place
ReLUs work, and no hook is ever registered on the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .batched import batched_vjp, start_relevance, target_list
from .contrast import contrast_maps
from .linear_op import LinearOp
from .memory import CatFunction, MaxPoolFunction, ReluFunction, ReluUse
from .rules import AddRule, LinearRule, NormRule, RelevanceRule, norm_affine
from .switch import RelevanceSwitch, relevance_enabled

_CONV = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}
_ADD_OUT = {torch.add, torch.Tensor.add, torch.Tensor.__add__, torch.Tensor.__radd__}
_ADD_IN = {torch.Tensor.add_, torch.Tensor.__iadd__}
_CAT = {torch.cat, torch.concat, torch.concatenate}
_MAXPOOL = {F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3}
_RELU = {F.relu: False, torch.relu: False, torch.Tensor.relu: False, torch.relu_: True, torch.Tensor.relu_: True}


def _requires_grad(out) -> bool:
    if isinstance(out, torch.Tensor):
        return out.requires_grad
    return isinstance(out, (list, tuple)) and any(_requires_grad(o) for o in out)


def _is_activation(t) -> bool:
    return isinstance(t, torch.Tensor) and not isinstance(t, nn.Parameter) and t.is_floating_point() \
        and t.requires_grad


class RelevanceMode(TorchFunctionMode):
    """Wraps linear, normalisation and residual-addition calls in rule Functions (and concatenation,
    ReLU and max pooling in the Functions of :mod:`sibnet.saliency.memory`).

    Args:
        rule: the relevance rule of every linear, normalisation and residual-addition call.
        switch: the switch that every wrapped Function holds (a new one by default); the backward
            pass that should propagate relevance runs inside ``relevance_enabled(mode.switch)``.
    """

    def __init__(self, rule: RelevanceRule, switch: RelevanceSwitch | None = None):
        super().__init__()
        self.rule = rule
        self.switch = RelevanceSwitch() if switch is None else switch
        # id(ReLU output) -> (output, ReluUse), for this forward pass only
        self._relus: dict[int, tuple[torch.Tensor, ReluUse]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        uses = self._uses(func, args, kwargs) if self._relus else ()
        out = self._dispatch(func, args, kwargs)
        if uses and _requires_grad(out):  # a differentiable consumer (not a shape query or detach)
            for use, multiplies in uses:
                use.consumers += multiplies
                use.other |= not multiplies
        return out

    def _uses(self, func, args, kwargs):
        """``(ReluUse, multiplies)`` for each ReLU output among the arguments: whether this call's
        relevance rule multiplies that argument's relevance by the argument itself."""
        if func in _CONV or func is F.linear:
            multiplying = {id(args[0] if args else kwargs.get("input"))}
        elif func in _ADD_OUT and self._is_residual(args, kwargs):
            multiplying = {id(args[0]), id(args[1])}
        else:
            multiplying = set()
        uses = []
        for arg in [*args, *kwargs.values()]:
            for t in (arg if isinstance(arg, (list, tuple)) else (arg,)):
                if isinstance(t, torch.Tensor) and id(t) in self._relus and self._relus[id(t)][0] is t:
                    uses.append((self._relus[id(t)][1], id(t) in multiplying))
        return uses

    def consumed_outside(self, t):
        """``t`` leaves the pass (the logits): its relevance does not come from a rule."""
        entry = self._relus.get(id(t))
        if entry is not None and entry[0] is t:
            entry[1].other = True

    def _dispatch(self, func, args, kwargs):
        if func in _CONV:
            return self._conv(func, args, kwargs)
        if func is F.linear:
            return self._linear(args, kwargs)
        if func is F.batch_norm:
            return self._batch_norm(args, kwargs)
        if func in _ADD_OUT or func in _ADD_IN:
            return self._add(func, args, kwargs)
        if func in _CAT:
            return self._cat(func, args, kwargs)
        if func in _RELU:
            return self._relu(func, args, kwargs)
        if func in _MAXPOOL:
            return self._max_pool(func, args, kwargs)
        return func(*args, **kwargs)

    def _max_pool(self, func, args, kwargs):
        names = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
        bound = dict(zip(names, args), **kwargs)
        x = bound.get("input")
        if bound.get("return_indices") or set(bound) - set(names) or not _is_activation(x) \
                or x.dim() != _MAXPOOL[func] + 2:
            return func(*args, **kwargs)  # with indices, or unbatched: PyTorch's own
        y, indices = func(**{**bound, "return_indices": True})
        return MaxPoolFunction.apply(x, y, indices, self.switch)

    def _conv(self, func, args, kwargs):
        y = func(*args, **kwargs)
        names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
        bound = dict(zip(names, args), **kwargs)
        x, weight, bias = bound["input"], bound["weight"], bound.get("bias")
        op = LinearOp.conv(_CONV[func], weight, *(bound[k] for k in names[3:] if k in bound))
        return LinearRule.apply(x, weight, bias, y, self.rule, op, self.switch)

    def _linear(self, args, kwargs):
        y = F.linear(*args, **kwargs)
        bound = dict(zip(("input", "weight", "bias"), args), **kwargs)
        return LinearRule.apply(bound["input"], bound["weight"], bound.get("bias"), y, self.rule, LinearOp(),
                                self.switch)

    def _batch_norm(self, args, kwargs):
        y = F.batch_norm(*args, **kwargs)
        names = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
        bound = dict(zip(names, args), **kwargs)
        x = bound["input"]
        if self.rule.passes_norm:
            scale = shift = x.new_zeros(())
        else:
            scale, shift = norm_affine(x, bound.get("running_mean"), bound.get("running_var"), bound.get("weight"),
                                       bound.get("bias"), bool(bound.get("training", False)), bound.get("eps", 1e-5))
        return NormRule.apply(x, y, scale, shift, self.rule, self.switch)

    @staticmethod
    def _is_residual(args, kwargs):
        return len(args) == 2 and not kwargs and _is_activation(args[0]) and _is_activation(args[1]) \
            and args[0].shape == args[1].shape

    def _add(self, func, args, kwargs):
        if not self._is_residual(args, kwargs):
            return func(*args, **kwargs)
        a, b = args
        if func in _ADD_IN:
            # in-place residual (``out += identity``): keep the in-place semantics for the caller
            a_value = a.clone()
            out = AddRule.apply(a_value, b, a_value + b, self.rule, self.switch)
            return a.copy_(out)
        return AddRule.apply(a, b, a + b, self.rule, self.switch)

    def _relu(self, func, args, kwargs):
        bound = dict(zip(("input", "inplace"), args), **kwargs)
        x = bound.get("input", bound.get("self"))
        if set(bound) - {"input", "self", "inplace"} or not _is_activation(x):
            return func(*args, **kwargs)
        inplace = _RELU[func] or bool(bound.get("inplace", False))
        if inplace and x._base is not None:
            return func(*args, **kwargs)  # in place on a view: PyTorch's own
        use = ReluUse()
        out = ReluFunction.apply(x, inplace, use, self.switch)
        self._relus[id(out)] = (out, use)
        return out

    def _cat(self, func, args, kwargs):
        names = ("tensors", "dim" if func is not torch.concatenate else "axis")
        bound = dict(zip(names, args), **kwargs)
        tensors, dim = bound.get("tensors"), bound.get(names[1], 0)
        if set(bound) - set(names) or not isinstance(tensors, (list, tuple)) or len(tensors) < 2 \
                or not any(_is_activation(t) for t in tensors) \
                or len({(t.dtype, t.device, t.dim()) for t in tensors if isinstance(t, torch.Tensor)}) != 1 \
                or not all(isinstance(t, torch.Tensor) for t in tensors) or not isinstance(dim, int):
            return func(*args, **kwargs)  # out=, type promotion, legacy empty tensors: PyTorch's own cat
        return CatFunction.apply(dim % tensors[0].dim(), *tensors)


def relevance_forward(model: nn.Module, x: torch.Tensor, rule: RelevanceRule, *, targets=None,
                      create_graph: bool = False, start: str = "one_hot", loop: bool = False,
                      trace: list | None = None, contrast: str = "none"):
    """One forward and one batched relevance pass: ``(logits (B,K), maps (B,K',*spatial))``.

    ``contrast`` ("none", "clrp", "sglrp"): class-contrastive maps (:mod:`.contrast`), combined
    from the one-hot maps of all K classes of the same pass, then restricted to ``targets``.

    The logits carry the ordinary autograd graph (their gradient is PyTorch's own), so a training
    loss can use them; the maps are differentiable w.r.t. the parameters when ``create_graph``.
    The model's state is NOT restored here (a training forward updates BatchNorm statistics once,
    like any forward); the public methods wrap this in :func:`~sibnet.saliency.state.preserve_state`.
    """
    leaf = x.detach().requires_grad_(True)
    with torch.enable_grad():
        with RelevanceMode(rule) as mode:
            logits = model(leaf)
        mode.consumed_outside(logits)
        contrastive = contrast != "none"
        seeds = start_relevance(logits, None if contrastive else targets, scale="one_hot" if contrastive else start)
        with relevance_enabled(mode.switch, trace):
            relevance = batched_vjp(logits, leaf, seeds, create_graph=create_graph, loop=loop)
    maps = relevance.sum(dim=2).transpose(0, 1)
    if contrastive:
        maps = contrast_maps(maps, logits, contrast, start=start)
        if targets is not None:
            maps = maps[:, target_list(targets, logits.shape[1])]
    return logits, maps
