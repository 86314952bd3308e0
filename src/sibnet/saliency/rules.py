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
RECOMPUTE_MODES = ("none", "pointwise", "all")


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


def sign(z: torch.Tensor) -> torch.Tensor:
    """Zennit's sign for stabilisers: +1 where ``z >= 0`` (also at 0), else -1."""
    return (z >= 0).to(z.dtype) * 2 - 1


def stabilize(z: torch.Tensor, eps: float) -> torch.Tensor:
    return z + eps * sign(z)


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
    # which layers' transposed pass (per class, the size of the layer input) the second-order
    # backward recomputes instead of keeping: "none" (least time), "pointwise" (linear layers and
    # 1x1 convolutions, whose transposed pass is one matrix product) or "all" (least memory); see
    # docs/benchmarks.md for what each costs on DenseNet-121
    recompute: str = "none"

    def __post_init__(self):
        if self.recompute not in RECOMPUTE_MODES:
            raise ValueError(f"recompute must be one of {', '.join(RECOMPUTE_MODES)}, got {self.recompute!r}")

    def keeps_transposed(self, op: "LinearOp", weight: torch.Tensor) -> bool:
        """Whether the second-order backward keeps this layer's transposed pass (else recomputes it)."""
        if self.recompute == "pointwise":
            return op.dims > 0 and any(k > 1 for k in weight.shape[2:])
        return self.recompute == "none"


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

    def pointwise(self, weight) -> bool:
        """A 1x1 convolution without stride, padding or groups: a matrix product over channels."""
        return self.dims > 0 and self.groups == 1 and all(k == 1 for k in weight.shape[2:]) \
            and all(s == 1 for s in self.stride) and all(p == 0 for p in self.padding)

    def forward(self, x, weight, bias=None):
        if self.dims == 0:
            return F.linear(x, weight, bias)
        conv = (F.conv1d, F.conv2d, F.conv3d)[self.dims - 1]
        return conv(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def input_grad(self, s, weight, x_shape):
        """The gradient of ``forward`` with respect to its input, applied to ``s`` (a VJP)."""
        if self.dims == 0:
            return s @ weight
        if self.pointwise(weight):
            w = weight.flatten(1).t()
            if not torch.is_grad_enabled():
                # a weight that requires grad makes matmul fold the batch into one product, which
                # copies ``s`` and the result (to spare autograd a per-image weight gradient)
                w = w.detach()
            return torch.matmul(w, s.flatten(2)).unflatten(2, s.shape[2:])
        transpose = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[self.dims - 1]
        out_pad = []
        for i in range(self.dims):
            n_in, n_out = x_shape[-self.dims + i], s.shape[-self.dims + i]
            k = weight.shape[2 + i]
            full = (n_out - 1) * self.stride[i] - 2 * self.padding[i] + self.dilation[i] * (k - 1) + 1
            out_pad.append(n_in - full)
        return transpose(s, weight, None, self.stride, self.padding, tuple(out_pad), self.groups, self.dilation)

    def weight_grad(self, s, x, weight):
        """``d<forward(x, weight), s> / d weight``: the weight's VJP of ``forward`` at ``x`` for the
        output gradient ``s`` (summed over the batch)."""
        if self.dims == 0:
            return s.flatten(0, -2).transpose(0, 1) @ x.flatten(0, -2)
        return torch.ops.aten.convolution_backward(
            s, x, weight, None, list(self.stride), list(self.padding), list(self.dilation), False,
            [0] * self.dims, self.groups, [False, True, False])[1]


def _stack_signs(op: LinearOp, x_a, x_b, w_a, w_b):
    """One layer input and weight for ``x_a w_a + x_b w_b``: both stacked along the input channels.

    Convolutions with groups interleave the two parts group by group, so group ``j`` sees
    ``[x_a_j, x_b_j]`` against ``[w_a_j, w_b_j]``. One convolution (and one transposed
    convolution) of the stacked pair gives the same sums as two, at about half the cost where the
    layer has few input channels (the first convolution of an image network).
    """
    if op.dims == 0:
        return torch.cat([x_a, x_b], dim=-1), torch.cat([w_a, w_b], dim=1)
    g = op.groups
    x = torch.cat([x_a.unflatten(1, (g, -1)), x_b.unflatten(1, (g, -1))], dim=2).flatten(1, 2)
    return x, torch.cat([w_a, w_b], dim=1)


def _unstack_signs(op: LinearOp, r):
    """The relevance of the stacked input of :func:`_stack_signs` summed back onto the layer input."""
    if op.dims == 0:
        return r.unflatten(-1, (2, -1)).sum(-2)
    return r.unflatten(1, (op.groups, 2, -1)).sum(2).flatten(1, 2)


def _linear_relevance(rule: Rule, op: LinearOp, x, weight, bias, y, r_out, nonneg: bool, dtype):
    # under autocast the layer ran in a lower precision (``dtype``): apply the rule in that dtype
    x, weight, r_out = x.to(dtype), weight.to(dtype), r_out.to(dtype)
    bias = None if bias is None else bias.to(dtype)
    keep = rule.keeps_transposed(op, weight)
    if rule.kind == "epsilon":
        y = y.to(dtype)
        r_in, s, z_stable = RatioRelevance.apply(r_out, x, weight, y, op, rule.eps, keep)[:3]
        if _MODE["trace"] is not None:
            absorbed = s * (z_stable - y)  # what the stabiliser and the bias keep
            if bias is not None:
                absorbed = absorbed + s * (bias.view((1, -1) + (1,) * op.dims) if op.dims else bias)
            _trace("epsilon", r_out, r_in, absorbed)
        return r_in
    x_pos = x if nonneg else x.clamp(min=0)  # the input itself where it cannot be negative (no copy)
    x_neg = None if nonneg else x.clamp(max=0)

    def part(r, w_a, w_b, b):
        # relevance through the contributions x+ w_a + x- w_b (+ b) of each output; also (s, z+stab)
        if x_neg is None:
            z = op.forward(x_pos, w_a, b)
            return RatioRelevance.apply(r, x_pos, w_a, z, op, rule.stabilizer, keep)[:3]
        xs, ws = _stack_signs(op, x_pos, x_neg, w_a, w_b)
        r_in, s, z_stable = RatioRelevance.apply(r, xs, ws, op.forward(xs, ws, b), op, rule.stabilizer, keep)[:3]
        return _unstack_signs(op, r_in), s, z_stable

    w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
    if rule.kind == "zplus":
        r_in, s, z_stable = part(r_out, w_pos, w_neg, None)
        if _MODE["trace"] is not None:
            # kept by the stabiliser, s * eps * sign(z) (all of it where z+ = 0); z_stable has z's sign
            _trace("zplus", r_out, r_in, s * (rule.stabilizer * sign(z_stable)))
        return r_in
    if rule.kind == "alpha_beta":
        b_pos = None if bias is None else bias.clamp(min=0)
        b_neg = None if bias is None else bias.clamp(max=0)
        r_p = part(r_out, w_pos, w_neg, b_pos)[0]
        r_n = part(r_out, w_neg, w_pos, b_neg)[0]
        r_in = rule.alpha * r_p - rule.beta * r_n
        _trace("alpha_beta", r_out, r_in)
        return r_in
    raise ValueError(f"unknown relevance rule {rule.kind!r}")


def _sum_of_products(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum(0)`` without the full-size product (one class at a time)."""
    out = a[0] * b[0]
    for i in range(1, a.shape[0]):
        out.addcmul_(a[i], b[i])
    return out


class RatioRelevance(torch.autograd.Function):
    """``r_in = x * T(r / stabilize(z, eps), w)`` for the linear layer ``op`` (T: its input VJP).

    The step that every LRP rule of a linear layer shares: the relevance of each output, divided by
    the output's (stabilised) contribution sum ``z``, is handed back through the layer's weights
    and multiplied by the input. ``r`` may hold several relevance tensors for one input, stacked
    along the batch dimension: ``r.shape[0] = K * x.shape[0]`` (class k's relevance of image b at
    row ``k * B + b``); under :func:`torch.func.vmap` the mapped dimension is folded into that one,
    so all classes go through one convolution.

    The point of writing this as one Function is memory: of the K-fold tensors it keeps only the
    ratio ``s`` for its backward (``x``, ``w`` and ``z`` have the size of one forward pass), where
    the same formula as separate autograd operations keeps ``r``, ``s`` and ``c = T(s, w)``, the last
    the size of the layer's input for each class (the largest tensor in a DenseNet, whose layer
    inputs are concatenations of all earlier features). Without ``keep`` the backward recomputes
    ``c`` (one more transposed pass of all classes); with ``keep`` it keeps ``c`` (for layers whose
    transposed pass costs more than its output's memory is worth).
    It is exact (gradients to ``r``, ``x``, ``w`` and ``z``) and not itself differentiable twice.

    Returns ``(r_in, s, z + eps sign z, c)``; the last three are not differentiable.
    """

    @staticmethod
    def forward(r, x, w, z, op, eps, keep):
        z_stable = stabilize(z, eps)
        k = r.shape[0] // x.shape[0]
        s = (r.unflatten(0, (k, -1)) / z_stable).flatten(0, 1)
        c = op.input_grad(s, w, x.shape)
        r_in = (c.unflatten(0, (k, -1)) * x).flatten(0, 1)
        return r_in, s, z_stable, c

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, x, w, _, op, _, keep = inputs
        _, s, z_stable, c = output
        ctx.mark_non_differentiable(s, z_stable, c)
        ctx.set_materialize_grads(False)  # no zero-filled gradients for those three
        ctx.save_for_backward(x, w, s, z_stable, *((c,) if keep else ()))
        ctx.op = op

    @staticmethod
    def backward(ctx, grad, _grad_s, _grad_z, _grad_c):
        x, w, s, z_stable, *kept = ctx.saved_tensors
        op = ctx.op
        need_r, need_x, need_w, need_z = ctx.needs_input_grad[:4]
        if grad is None:
            return None, None, None, None, None, None, None
        k = s.shape[0] // x.shape[0]
        g = grad.unflatten(0, (k, -1))
        g_r = g_x = g_w = g_z = None
        if need_x:  # sum over classes of grad * c, with c kept or recomputed (then freed at once)
            c = (kept[0] if kept else op.input_grad(s, w, x.shape)).unflatten(0, (k, -1))
            g_x = _sum_of_products(g, c)
            del c
        del kept
        gx_prod = (g * x).flatten(0, 1)  # d r_in / d c, applied
        if need_w:
            g_w = op.weight_grad(s, gx_prod, w)
        if need_r or need_z:
            g_s = op.forward(gx_prod, w).unflatten(0, (k, -1)).div_(z_stable)  # d/dr of r / z (a fresh tensor)
            del gx_prod
            if need_z:
                g_z = -_sum_of_products(g_s, s.unflatten(0, (k, -1)))
            if need_r:
                g_r = g_s.flatten(0, 1)
        return g_r, g_x, g_w, g_z, None, None, None

    @staticmethod
    def vmap(info, in_dims, r, x, w, z, op, eps, keep):
        r_dim, x_dim, w_dim, z_dim = in_dims[:4]
        if x_dim is not None or w_dim is not None or z_dim is not None:
            raise NotImplementedError("relevance rules map over the relevance only, not over layer inputs or weights")
        if r_dim is None:
            return RatioRelevance.apply(r, x, w, z, op, eps, keep), (None, None, None, None)
        r = r.movedim(r_dim, 0)
        k = r.shape[0]
        r_in, s, z_stable, c = RatioRelevance.apply(r.flatten(0, 1), x, w, z, op, eps, keep)
        return (r_in.unflatten(0, (k, -1)), s.unflatten(0, (k, -1)), z_stable, c.unflatten(0, (k, -1))), (0, 0, None, 0)


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


# --------------------------------------------------------------------------------------------
# concatenation (DenseNet's dense connections)


class CatRule(torch.autograd.Function):
    """``torch.cat(tensors, dim)`` whose backward, the split of the incoming gradient (or relevance:
    concatenation hands each part its own share unchanged), is :class:`SplitRule`.

    The result and both backward passes are PyTorch's own; what changes is the cost of
    differentiating the split again (``create_graph=True``): PyTorch's split is a set of slices
    whose backward writes each slice into a zero-filled tensor of the full size, so a DenseNet
    layer costs two full-size zero fills and an addition per class, where :class:`SplitRule`'s
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
        return (None,) + SplitRule.apply(grad, ctx.dim, ctx.sizes)


class SplitRule(torch.autograd.Function):
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


class ReluRule(torch.autograd.Function):
    """``relu(x)`` (in place where asked) whose backward is :class:`ReluGrad`.

    Deep Taylor and LRP pass relevance through a ReLU like a gradient (the rules sit on the linear
    layers), so both backward modes are PyTorch's own mask. The difference is the second-order
    cost: PyTorch's ``threshold_backward`` differentiates to a zero-filled tensor for the ReLU's
    output, one per class for every ReLU; :class:`ReluGrad` returns no gradient there. Where
    ``use`` says the mask changes nothing (:class:`ReluUse`), the relevance passes unchanged.
    """

    @staticmethod
    def forward(ctx, x, inplace: bool, use: ReluUse | None = None):
        out = x.relu_() if inplace else x.relu()
        if inplace:
            ctx.mark_dirty(x)
        ctx.save_for_backward(out)
        ctx.use = use
        return out

    @staticmethod
    def backward(ctx, grad):
        if _MODE["relevance"] and ctx.use is not None and ctx.use.masks_nothing:
            return grad, None, None
        (out,) = ctx.saved_tensors
        return ReluGrad.apply(grad, out), None, None


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


class MaxPoolRule(torch.autograd.Function):
    """``max_pool(x)`` (computed by the caller, with its indices) whose relevance backward is
    :class:`MaxPoolGrad`: each output's relevance goes to the input pixel that won its window,
    exactly PyTorch's gradient of max pooling, but with all K classes in one scatter (PyTorch's
    batching rule for that gradient copies the class-stacked relevance to move the class dimension)."""

    @staticmethod
    def forward(ctx, x, y, indices):
        ctx.save_for_backward(indices)
        ctx.in_shape = x.shape
        return y.clone()

    @staticmethod
    def backward(ctx, grad):
        if not _MODE["relevance"]:
            return None, grad, None
        (indices,) = ctx.saved_tensors
        return MaxPoolGrad.apply(grad, indices, ctx.in_shape), None, None


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
