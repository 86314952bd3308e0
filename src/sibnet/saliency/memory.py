"""Autograd Functions that change what a relevance pass costs, never what it computes.

Deep Taylor and LRP pass relevance through concatenation, ReLU and max pooling exactly as the
gradient passes (the rules sit on the linear layers, :mod:`sibnet.saliency.rules`). These
Functions keep PyTorch's values and gradients there; they only avoid the full-size zero-filled
tensors that differentiating PyTorch's own backward again (``create_graph=True``) builds per
class, skip ReLU masks that change nothing, and scatter all K classes of max pooling at once.
"""

from __future__ import annotations

import torch

from .switch import RelevanceSwitch

# --------------------------------------------------------------------------------------------
# concatenation (DenseNet's dense connections)


class CatFunction(torch.autograd.Function):
    """``torch.cat(tensors, dim)`` whose backward, the split of the incoming gradient (or relevance:
    concatenation hands each part its own share unchanged), is :class:`SplitFunction`.

    The result and both backward passes are PyTorch's own; what changes is the cost of
    differentiating the split again (``create_graph=True``): PyTorch's split is a set of slices
    whose backward writes each slice into a zero-filled tensor of the full size, so a DenseNet
    layer costs two full-size zero fills and an addition per class, where :class:`SplitFunction`'s
    backward is one concatenation.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(dim, *tensors):
        return torch.cat(tensors, dim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        dim, *tensors = inputs
        ctx.dim = dim
        ctx.sizes = tuple(t.shape[dim] for t in tensors)

    @staticmethod
    def backward(ctx, grad):
        return (None,) + SplitFunction.apply(grad, ctx.dim, ctx.sizes)


class SplitFunction(torch.autograd.Function):
    """``grad.split(sizes, dim)`` with a concatenation as its backward (parts without a gradient are zeros)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(grad, dim, sizes):
        return tuple(grad.split(sizes, dim))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.dim = inputs[1]
        ctx.set_materialize_grads(False)
        ctx.shapes = [(o.shape, o.dtype, o.device) for o in output]

    @staticmethod
    def backward(ctx, *grads):
        parts = [g if g is not None else torch.zeros(shape, dtype=dtype, device=device)
                 for g, (shape, dtype, device) in zip(grads, ctx.shapes)]
        return torch.cat(parts, ctx.dim), None, None


# --------------------------------------------------------------------------------------------
# ReLU


class ReluUse:
    """What consumed one ReLU output during a relevance forward pass.

    ``masks_nothing`` holds when at least one consumer was seen and every consumer is a rule whose
    relevance is its input times something (linear layers under every rule, residual additions):
    the relevance reaching the ReLU is then already zero wherever its output is zero, so the
    ReLU's mask changes no value. Skipping it is exact also for the second-order gradients: the
    gradient that the mask would zero flows into the consumer's input, which is the ReLU's output,
    and the ReLU's ordinary backward masks it there.
    """

    __slots__ = ("consumers", "other")

    def __init__(self):
        self.consumers = 0  # consumers that multiply their relevance by this output
        self.other = False  # any other consumer (pooling, concatenation, views, the logits themselves)

    @property
    def masks_nothing(self) -> bool:
        return self.consumers > 0 and not self.other


class ReluFunction(torch.autograd.Function):
    """``relu(x)`` (in place where asked) whose backward is :class:`ReluGrad`.

    Deep Taylor and LRP pass relevance through a ReLU like a gradient (the rules sit on the linear
    layers), so both backward modes are PyTorch's own mask. The difference is the second-order
    cost: PyTorch's ``threshold_backward`` differentiates to a zero-filled tensor for the ReLU's
    output, one per class for every ReLU; :class:`ReluGrad` returns no gradient there. Where
    ``use`` says the mask changes nothing (:class:`ReluUse`) and ``switch`` is on, the relevance
    passes unchanged.
    """

    @staticmethod
    def forward(ctx, x, inplace: bool, use: ReluUse | None, switch: RelevanceSwitch):
        out = x.relu_() if inplace else x.relu()
        if inplace:
            ctx.mark_dirty(x)
        ctx.save_for_backward(out)
        ctx.use, ctx.switch = use, switch
        return out

    @staticmethod
    def backward(ctx, grad):
        if ctx.switch.relevance and ctx.use is not None and ctx.use.masks_nothing:
            return grad, None, None, None
        (out,) = ctx.saved_tensors
        return ReluGrad.apply(grad, out), None, None, None


class ReluGrad(torch.autograd.Function):
    """``grad * (out > 0)``, differentiable in ``grad`` only (the mask is constant almost everywhere)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(grad, out):
        return torch.ops.aten.threshold_backward(grad, out, 0)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])

    @staticmethod
    def backward(ctx, grad_grad):
        (out,) = ctx.saved_tensors
        return torch.ops.aten.threshold_backward(grad_grad, out, 0), None


# --------------------------------------------------------------------------------------------
# max pooling (winner takes all)


class MaxPoolFunction(torch.autograd.Function):
    """``max_pool(x)`` (computed by the caller, with its indices) whose relevance backward (``switch``
    on) is :class:`MaxPoolGrad`: each output's relevance goes to the input pixel that won its window,
    exactly PyTorch's gradient of max pooling, but with all K classes in one scatter (PyTorch's
    batching rule for that gradient copies the class-stacked relevance to move the class dimension).
    With ``switch`` off the gradient is PyTorch's own."""

    @staticmethod
    def forward(ctx, x, y, indices, switch: RelevanceSwitch):
        ctx.save_for_backward(indices)
        ctx.in_shape = x.shape
        ctx.switch = switch
        return y.clone()

    @staticmethod
    def backward(ctx, grad):
        if not ctx.switch.relevance:
            return None, grad, None, None
        (indices,) = ctx.saved_tensors
        return MaxPoolGrad.apply(grad, indices, ctx.in_shape), None, None, None


def _fold_index(indices: torch.Tensor, k: int) -> torch.Tensor:
    """The (B, C, n) flat window winners as (k, B, C, n), without a copy."""
    return indices.flatten(2).unsqueeze(0).expand(k, -1, -1, -1)


class MaxPoolGrad(torch.autograd.Function):
    """``r_in[winner] += r`` for K relevance tensors stacked on the batch (``r.shape[0] = K * B``);
    its derivative in ``r`` is the gather at the winners."""

    @staticmethod
    def forward(r, indices, in_shape):
        k = r.shape[0] // indices.shape[0]
        src = r.flatten(2).unflatten(0, (k, -1))
        out = r.new_zeros((k,) + tuple(in_shape[:2]) + (int(torch.Size(in_shape[2:]).numel()),))
        out.scatter_add_(3, _fold_index(indices, k), src)
        return out.flatten(0, 1).unflatten(2, tuple(in_shape[2:]))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])

    @staticmethod
    def backward(ctx, grad):
        (indices,) = ctx.saved_tensors
        k = grad.shape[0] // indices.shape[0]
        g = grad.flatten(2).unflatten(0, (k, -1)).gather(3, _fold_index(indices, k))
        return g.flatten(0, 1).unflatten(2, tuple(indices.shape[2:])), None, None

    @staticmethod
    def vmap(info, in_dims, r, indices, in_shape):
        if in_dims[1] is not None:
            raise NotImplementedError("relevance rules map over the relevance only")
        r = r.movedim(in_dims[0], 0)
        k = r.shape[0]
        return MaxPoolGrad.apply(r.flatten(0, 1), indices, in_shape).unflatten(0, (k, -1)), 0
