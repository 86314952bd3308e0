"""Relevance rules as autograd Functions with two backward behaviours.

Each wrapped operation returns the value of the original operation (computed with its own
autograd graph) and has a backward that runs in one of two modes:

* normal mode (the default): the incoming gradient is handed to the original operation's
  graph, so the ordinary training gradient is exactly PyTorch's own;
* relevance mode (only inside :func:`relevance_enabled`): the incoming gradient is read as
  the relevance of the operation's output and the layer's LRP rule returns the relevance of
  its input. The rule is written with differentiable torch operations on the saved input and
  parameters, so ``create_graph=True`` gives exact second-order gradients, also to the
  weights used inside the rule.

Rules (``Rule.kind``):

``zplus``       deep Taylor z+ (alpha=1, beta=0), bias ignored:
                ``R_i = sum_j (x_i^+ w_ij^+ + x_i^- w_ij^-) / z_j^+ R_j``
``epsilon``     LRP-epsilon with the bias: ``R_i = sum_j x_i w_ij / (z_j + eps sign z_j) R_j``
``alpha_beta``  LRP-alpha-beta, biases clamped into the positive and negative parts.

Stabilisation follows Zennit's convention: ``z + eps * sign(z)`` with ``sign(0) = +1``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_MODE = {"relevance": False, "trace": None}


@contextlib.contextmanager
def relevance_enabled(trace: list | None = None):
    """Within this context, rule Functions propagate relevance instead of gradients."""
    previous = dict(_MODE)
    _MODE["relevance"] = True
    _MODE["trace"] = trace
    try:
        yield
    finally:
        _MODE.update(previous)


def stabilize(z: torch.Tensor, eps: float) -> torch.Tensor:
    sign = (z >= 0).to(z.dtype) * 2 - 1
    return z + eps * sign


@dataclass(frozen=True)
class Rule:
    """How relevance crosses linear layers, normalisation layers and residual additions."""

    kind: str = "zplus"  # zplus | epsilon | alpha_beta
    eps: float = 1e-6  # epsilon of LRP-epsilon
    stabilizer: float = 1e-12  # denominator stabiliser of z+ and alpha-beta
    alpha: float = 2.0
    beta: float = 1.0
    norm: str = "pass"  # pass (identity for relevance) | affine (LRP rule on the affine map)
    add_eps: float = 1e-6  # stabiliser of the proportional split at residual additions


def _trace(kind: str, r_out: torch.Tensor, r_in: torch.Tensor, absorbed: torch.Tensor | None = None):
    trace = _MODE["trace"]
    if trace is not None:
        trace.append((kind, r_out.detach(), r_in.detach(), None if absorbed is None else absorbed.detach()))


# --------------------------------------------------------------------------------------------
# linear layers (F.linear, F.conv1d/2d/3d)


@dataclass(frozen=True)
class LinearOp:
    """The geometry of one linear layer call: ``None`` for F.linear, else conv arguments."""

    dims: int = 0  # 0 for F.linear, 1/2/3 for convolutions
    stride: tuple = ()
    padding: tuple = ()
    dilation: tuple = ()
    groups: int = 1

    def forward(self, x, weight, bias=None):
        if self.dims == 0:
            return F.linear(x, weight, bias)
        conv = (F.conv1d, F.conv2d, F.conv3d)[self.dims - 1]
        return conv(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def input_grad(self, s, weight, x_shape):
        """The gradient of ``forward`` with respect to its input, applied to ``s`` (a VJP)."""
        if self.dims == 0:
            return s @ weight
        transpose = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[self.dims - 1]
        out_pad = []
        for i in range(self.dims):
            n_in, n_out = x_shape[-self.dims + i], s.shape[-self.dims + i]
            k = weight.shape[2 + i]
            full = (n_out - 1) * self.stride[i] - 2 * self.padding[i] + self.dilation[i] * (k - 1) + 1
            out_pad.append(n_in - full)
        return transpose(s, weight, None, self.stride, self.padding, tuple(out_pad), self.groups, self.dilation)


def _linear_relevance(rule: Rule, op: LinearOp, x, weight, bias, y, r_out, nonneg: bool, dtype):
    # under autocast the layer ran in a lower precision (``dtype``): apply the rule in that dtype
    x, weight, r_out = x.to(dtype), weight.to(dtype), r_out.to(dtype)
    bias = None if bias is None else bias.to(dtype)
    if rule.kind == "epsilon":
        s = r_out / stabilize(y, rule.eps)
        r_in = x * op.input_grad(s, weight, x.shape)
        absorbed = s * (stabilize(y, rule.eps) - y)  # what the stabiliser and the bias keep
        if bias is not None:
            absorbed = absorbed + s * (bias.view((1, -1) + (1,) * op.dims) if op.dims else bias)
        _trace("epsilon", r_out, r_in, absorbed)
        return r_in
    w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
    x_pos = x.clamp(min=0)
    x_neg = None if nonneg else x.clamp(max=0)

    def part(w_a, w_b, b):
        # contributions x+ w_a + x- w_b (+ b); returns (z, function mapping a ratio to relevance)
        z = op.forward(x_pos, w_a, b)
        if x_neg is not None:
            z = z + op.forward(x_neg, w_b)

        def back(ratio):
            if x_neg is None:
                return x_pos * op.input_grad(ratio, w_a, x.shape)
            if op.groups == 1:
                # one transposed pass with both weight signs stacked along the input channels: the
                # same sums as two passes, at about half the cost where the layer has few input
                # channels (the first convolution of an image network)
                c = x.shape[1] if op.dims else x.shape[-1]
                both = op.input_grad(ratio, torch.cat([w_a, w_b], dim=1), x.shape[:1] + (2 * c,) + x.shape[2:]
                                     if op.dims else x.shape[:-1] + (2 * c,))
                g_a, g_b = (both[:, :c], both[:, c:]) if op.dims else (both[..., :c], both[..., c:])
                return x_pos * g_a + x_neg * g_b
            return x_pos * op.input_grad(ratio, w_a, x.shape) + x_neg * op.input_grad(ratio, w_b, x.shape)

        return z, back

    if rule.kind == "zplus":
        z, back = part(w_pos, w_neg, None)
        z_stable = stabilize(z, rule.stabilizer)
        s = r_out / z_stable
        r_in = back(s)
        _trace("zplus", r_out, r_in, s * (z_stable - z))  # kept by the stabiliser (all of it where z+ = 0)
        return r_in
    if rule.kind == "alpha_beta":
        b_pos = None if bias is None else bias.clamp(min=0)
        b_neg = None if bias is None else bias.clamp(max=0)
        zp, back_p = part(w_pos, w_neg, b_pos)
        zn, back_n = part(w_neg, w_pos, b_neg)
        r_in = rule.alpha * back_p(r_out / stabilize(zp, rule.stabilizer)) - rule.beta * back_n(
            r_out / stabilize(zn, rule.stabilizer))
        _trace("alpha_beta", r_out, r_in)
        return r_in
    raise ValueError(f"unknown relevance rule {rule.kind!r}")


class LinearRule(torch.autograd.Function):
    """``out = y``; relevance mode applies the rule of ``rule.kind`` to the layer ``op``."""

    @staticmethod
    def forward(ctx, x, weight, bias, y, rule: Rule, op: LinearOp):
        ctx.rule, ctx.op = rule, op
        ctx.nonneg = bool((x >= 0).all()) if rule.kind != "epsilon" else False
        ctx.has_bias = bias is not None
        ctx.dtype = y.dtype
        # only LRP-epsilon reads the layer's output; z+ and alpha-beta recompute their own parts,
        # so saving it would keep every layer's output alive twice
        saved = (x, weight) + ((y,) if rule.kind == "epsilon" else ()) + ((bias,) if bias is not None else ())
        ctx.save_for_backward(*saved)
        return y.clone()

    @staticmethod
    def backward(ctx, grad):
        if not _MODE["relevance"]:
            return None, None, None, grad, None, None
        x, weight, *rest = ctx.saved_tensors
        y = rest.pop(0) if ctx.rule.kind == "epsilon" else None
        bias = rest[0] if ctx.has_bias else None
        r_in = _linear_relevance(ctx.rule, ctx.op, x, weight, bias, y, grad, ctx.nonneg, ctx.dtype)
        return r_in, None, None, None, None, None


# --------------------------------------------------------------------------------------------
# normalisation layers (F.batch_norm)


class NormRule(torch.autograd.Function):
    """Batch normalisation ``y = a x + c`` (per channel).

    ``norm="pass"``: relevance passes unchanged (deep Taylor, as iNNvestigate does);
    ``norm="affine"``: the input keeps the share ``|a x| / (|a x| + |c| + eps)`` under LRP-epsilon
    and the alpha-beta split of ``(a x, c)`` under alpha-beta: relevance is shared between input
    and shift and never amplified by the epsilon rule.
    """

    @staticmethod
    def forward(ctx, x, y, scale, shift, rule: Rule):
        ctx.rule = rule
        ctx.save_for_backward(x, scale, shift)
        return y.clone()

    @staticmethod
    def backward(ctx, grad):
        if not _MODE["relevance"]:
            return None, grad, None, None, None
        rule = ctx.rule
        if rule.norm == "pass":
            _trace("norm_pass", grad, grad)
            return grad, None, None, None, None
        x, scale, shift = ctx.saved_tensors
        ax = scale * x
        if rule.kind == "alpha_beta":
            zp = ax.clamp(min=0) + shift.clamp(min=0)
            zn = ax.clamp(max=0) + shift.clamp(max=0)
            r_in = rule.alpha * grad * ax.clamp(min=0) / stabilize(zp, rule.stabilizer) - rule.beta * grad * ax.clamp(
                max=0) / stabilize(zn, rule.stabilizer)
        else:
            eps = rule.eps if rule.kind == "epsilon" else rule.stabilizer
            r_in = grad * ax.abs() / (ax.abs() + shift.abs() + eps)
        _trace("norm_affine", grad, r_in, grad - r_in)
        return r_in, None, None, None, None


def norm_affine(x, running_mean, running_var, weight, bias, use_batch_stats: bool, eps: float):
    """Per-channel ``(scale, shift)`` of a batch-norm call, shaped to broadcast against ``x``."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    if use_batch_stats or running_mean is None:
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dims)
        var = x.var(dims, unbiased=False)
    else:
        mean, var = running_mean, running_var
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    return scale.view(shape), shift.view(shape)


# --------------------------------------------------------------------------------------------
# residual additions


class AddRule(torch.autograd.Function):
    """``out = a + b``; relevance is split in proportion to the summands (stabilised)."""

    @staticmethod
    def forward(ctx, a, b, total, rule: Rule):
        ctx.rule = rule
        ctx.save_for_backward(a, b, total)
        return total.clone()

    @staticmethod
    def backward(ctx, grad):
        if not _MODE["relevance"]:
            return None, None, grad, None
        a, b, total = ctx.saved_tensors
        total_stable = stabilize(total, ctx.rule.add_eps)
        ratio = grad / total_stable
        r_a, r_b = a * ratio, b * ratio
        _trace("add", grad, r_a + r_b, ratio * (total_stable - total))
        return r_a, r_b, None, None
