"""The LRP rules and the autograd Functions that apply them, each with two backward behaviours.

Each wrapped operation returns the value of the original operation (computed with its own
autograd graph) and has a backward that runs in one of two modes, set by its pass's
:class:`~sibnet.saliency.switch.RelevanceSwitch`:

* normal mode (the default): the incoming gradient is handed to the original operation's
  graph, so the ordinary training gradient is exactly PyTorch's own;
* relevance mode (only inside :func:`~sibnet.saliency.switch.relevance_enabled`): the incoming
  gradient is read as the relevance of the operation's output and the layer's LRP rule returns
  the relevance of its input. The rule is written with differentiable torch operations on the
  saved input and parameters, so ``create_graph=True`` gives exact second-order gradients, also
  to the weights used inside the rule.

The rules, one class each on a shared core (:class:`RelevanceRule`, after Zennit's rules), each
owning its formula for linear layers and for batch normalisation as an affine layer:

:class:`ZPlus`      deep Taylor z+ (alpha=1, beta=0), bias ignored:
                    ``R_i = sum_j (x_i^+ w_ij^+ + x_i^- w_ij^-) / z_j^+ R_j``
:class:`Epsilon`    LRP-epsilon with the bias: ``R_i = sum_j x_i w_ij / (z_j + eps sign z_j) R_j``
:class:`AlphaBeta`  LRP-alpha-beta, biases clamped into the positive and negative parts.

:func:`Rule` builds one from its option string (``kind``, the class's :attr:`~RelevanceRule.name`).
Stabilisation follows Zennit's convention: ``z + eps * sign(z)`` with ``sign(0) = +1``.

The Functions: :class:`LinearRule` (linear layers), :class:`NormRule` (batch normalisation),
:class:`AddRule` (residual additions) and :class:`RatioRelevance`, the step that every rule of a
linear layer shares. The Functions that change only a pass's cost (concatenation, ReLU, max
pooling) are in :mod:`sibnet.saliency.memory`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

import torch

from .linear_op import LinearOp
from .switch import RelevanceSwitch

RECOMPUTE_MODES = ("none", "pointwise", "all")


def sign(z: torch.Tensor) -> torch.Tensor:
    """Zennit's sign for stabilisers: +1 where ``z >= 0`` (also at 0), else -1."""
    return (z >= 0).to(z.dtype) * 2 - 1


def stabilize(z: torch.Tensor, eps: float) -> torch.Tensor:
    """``z + eps * sign(z)``: a denominator moved away from 0 by ``eps``, keeping its sign."""
    return z + eps * sign(z)


def _tracing(switch: RelevanceSwitch | None) -> bool:
    return switch is not None and switch.tracing


# --------------------------------------------------------------------------------------------
# the rules


@dataclass(frozen=True, kw_only=True)
class RelevanceRule:
    """The core that every rule shares: the options of the steps outside linear layers and the
    ratio step of linear layers (:meth:`ratio`, :meth:`signed_ratio`).

    A subclass owns its formulas: :meth:`linear` for linear layers and convolutions and
    :meth:`affine_norm` for batch normalisation as an affine layer (``norm="affine"``).

    Attributes:
        norm: "pass" (relevance crosses batch normalisation unchanged, as in iNNvestigate's deep
            Taylor) or "affine" (the rule's :meth:`affine_norm` on the layer's affine map).
        add_eps: stabiliser of the proportional split at residual additions.
        recompute: which layers' transposed pass (per class, the size of the layer input) the
            second-order backward recomputes instead of keeping: "none" (least time),
            "pointwise" (linear layers and 1x1 convolutions, whose transposed pass is one matrix
            product) or "all" (least memory); see docs/benchmarks.md for what each costs on
            DenseNet-121.
    """

    #: the option string of the rule (:func:`Rule`) and the step name in a trace
    name: ClassVar[str] = ""
    #: whether :meth:`linear` reads the layer's output (else :class:`LinearRule` does not keep it)
    reads_output: ClassVar[bool] = False
    #: whether :meth:`linear` treats positive and negative inputs apart (then an input known to be
    #: non-negative spares the split)
    splits_signs: ClassVar[bool] = True

    norm: str = "pass"
    add_eps: float = 1e-6
    recompute: str = "none"

    def __post_init__(self):
        if self.recompute not in RECOMPUTE_MODES:
            raise ValueError(f"recompute must be one of {', '.join(RECOMPUTE_MODES)}, got {self.recompute!r}")

    @property
    def passes_norm(self) -> bool:
        """Whether relevance crosses batch normalisation unchanged (``norm="pass"``)."""
        return self.norm == "pass"

    def keeps_transposed(self, op: LinearOp, weight: torch.Tensor) -> bool:
        """Whether the second-order backward keeps this layer's transposed pass (else recomputes it)."""
        if self.recompute == "pointwise":
            return op.dims > 0 and any(k > 1 for k in weight.shape[2:])
        return self.recompute == "none"

    def ratio(self, r, x, weight, z, op: LinearOp, eps: float):
        """``(r_in, s, z + eps sign z)`` of :class:`RatioRelevance` for the layer ``op``."""
        return RatioRelevance.apply(r, x, weight, z, op, eps, self.keeps_transposed(op, weight))[:3]

    def signed_ratio(self, op: LinearOp, x_pos, x_neg, r, w_a, w_b, b, eps: float):
        """:meth:`ratio` through the contributions ``x+ w_a + x- w_b (+ b)`` of each output.

        ``x_neg=None`` (an input without negative values) drops the second term; else both terms
        go through one stacked pass (:meth:`LinearOp.stack_signs`).
        """
        if x_neg is None:
            return self.ratio(r, x_pos, w_a, op.forward(x_pos, w_a, b), op, eps)
        xs, ws = op.stack_signs(x_pos, x_neg, w_a, w_b)
        r_in, s, z_stable = self.ratio(r, xs, ws, op.forward(xs, ws, b), op, eps)
        return op.unstack_signs(r_in), s, z_stable

    @staticmethod
    def split_signs(x: torch.Tensor, nonneg: bool):
        """``(x+, x-)``; ``x+`` is ``x`` itself (no copy) and ``x-`` None where ``x`` cannot be negative."""
        return (x, None) if nonneg else (x.clamp(min=0), x.clamp(max=0))

    @staticmethod
    def proportional_share(r, ax, shift, eps: float):
        """``r |a x| / (|a x| + |c| + eps)``: the input's share of ``a x + c``, never amplified."""
        return r * ax.abs() / (ax.abs() + shift.abs() + eps)

    def linear(self, op: LinearOp, x, weight, bias, y, r_out, *, nonneg: bool = False,
               switch: RelevanceSwitch | None = None) -> torch.Tensor:
        """The relevance of the input ``x`` of the layer ``y = op.forward(x, weight, bias)``.

        Args:
            op: the layer's geometry.
            x: the layer's input.
            weight: the layer's weight.
            bias: the layer's bias, or None for a layer without one.
            y: the layer's output where :attr:`reads_output`, else None.
            r_out: the relevance of ``y``, K tensors stacked on the batch (``K * B`` rows).
            nonneg: ``x`` is known to have no negative values.
            switch: the pass's switch, whose trace (if any) records the step.
        """
        raise NotImplementedError

    def affine_norm(self, r, ax, shift) -> torch.Tensor:
        """The relevance of the input of batch normalisation ``y = a x + c`` given ``r`` of ``y``."""
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class ZPlus(RelevanceRule):
    """Deep Taylor z+: ``R_i = sum_j (x_i^+ w_ij^+ + x_i^- w_ij^-) / z_j^+ R_j``, the bias ignored.

    Attributes:
        stabilizer: the denominator's stabiliser (also of :meth:`affine_norm`).
    """

    name: ClassVar[str] = "zplus"
    stabilizer: float = 1e-12

    def linear(self, op, x, weight, bias, y, r_out, *, nonneg=False, switch=None):
        x_pos, x_neg = self.split_signs(x, nonneg)
        w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
        r_in, s, z_stable = self.signed_ratio(op, x_pos, x_neg, r_out, w_pos, w_neg, None, self.stabilizer)
        if _tracing(switch):
            # kept by the stabiliser, s * eps * sign(z) (all of it where z+ = 0); z_stable has z's sign
            switch.record(self.name, r_out, r_in, s * (self.stabilizer * sign(z_stable)))
        return r_in

    def affine_norm(self, r, ax, shift):
        return self.proportional_share(r, ax, shift, self.stabilizer)


@dataclass(frozen=True, kw_only=True)
class Epsilon(RelevanceRule):
    """LRP-epsilon with the bias: ``R_i = sum_j x_i w_ij / (z_j + eps sign z_j) R_j``.

    Attributes:
        eps: the denominator's stabiliser (also of :meth:`affine_norm`).
    """

    name: ClassVar[str] = "epsilon"
    reads_output: ClassVar[bool] = True
    splits_signs: ClassVar[bool] = False
    eps: float = 1e-6

    def linear(self, op, x, weight, bias, y, r_out, *, nonneg=False, switch=None):
        r_in, s, z_stable = self.ratio(r_out, x, weight, y, op, self.eps)
        if _tracing(switch):
            absorbed = s * (z_stable - y)  # what the stabiliser and the bias keep
            if bias is not None:
                absorbed = absorbed + s * (bias.view((1, -1) + (1,) * op.dims) if op.dims else bias)
            switch.record(self.name, r_out, r_in, absorbed)
        return r_in

    def affine_norm(self, r, ax, shift):
        return self.proportional_share(r, ax, shift, self.eps)


@dataclass(frozen=True, kw_only=True)
class AlphaBeta(RelevanceRule):
    """LRP-alpha-beta: ``alpha`` times the relevance through the positive contributions (and the
    positive part of the bias) minus ``beta`` times that through the negative ones.

    Attributes:
        alpha, beta: the weights of the two parts (the public method asks ``alpha - beta = 1``).
        stabilizer: the denominators' stabiliser.
    """

    name: ClassVar[str] = "alpha_beta"
    alpha: float = 2.0
    beta: float = 1.0
    stabilizer: float = 1e-12

    def linear(self, op, x, weight, bias, y, r_out, *, nonneg=False, switch=None):
        x_pos, x_neg = self.split_signs(x, nonneg)
        w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
        b_pos = None if bias is None else bias.clamp(min=0)
        b_neg = None if bias is None else bias.clamp(max=0)
        r_p = self.signed_ratio(op, x_pos, x_neg, r_out, w_pos, w_neg, b_pos, self.stabilizer)[0]
        r_n = self.signed_ratio(op, x_pos, x_neg, r_out, w_neg, w_pos, b_neg, self.stabilizer)[0]
        r_in = self.alpha * r_p - self.beta * r_n
        if _tracing(switch):
            switch.record(self.name, r_out, r_in)
        return r_in

    def affine_norm(self, r, ax, shift):
        """The alpha-beta split of ``(a x, c)``."""
        zp = ax.clamp(min=0) + shift.clamp(min=0)
        zn = ax.clamp(max=0) + shift.clamp(max=0)
        return self.alpha * r * ax.clamp(min=0) / stabilize(zp, self.stabilizer) - self.beta * r * ax.clamp(
            max=0) / stabilize(zn, self.stabilizer)


#: the rule classes by their option string
RULES: dict[str, type[RelevanceRule]] = {cls.name: cls for cls in (ZPlus, Epsilon, AlphaBeta)}


def Rule(kind: str = "zplus", *, eps: float = 1e-6, stabilizer: float = 1e-12, alpha: float = 2.0,
         beta: float = 1.0, norm: str = "pass", add_eps: float = 1e-6, recompute: str = "none") -> RelevanceRule:
    """The rule named ``kind`` (a key of :data:`RULES`) with the options it takes.

    Spelt like a class so that ``Rule(kind=..., ...)``, the configuration of the relevance
    methods, reads as it always has; what it returns is an instance of the rule's own class.

    One set of options builds any rule: the options that the rule does not own (``eps`` for
    z+ and alpha-beta, ``stabilizer``, ``alpha`` and ``beta`` for epsilon) are ignored.

    Args:
        kind: "zplus", "epsilon" or "alpha_beta".
        eps: :attr:`Epsilon.eps`.
        stabilizer: :attr:`ZPlus.stabilizer` and :attr:`AlphaBeta.stabilizer`.
        alpha: :attr:`AlphaBeta.alpha`, the weight of the positive contributions.
        beta: :attr:`AlphaBeta.beta`, the weight of the negative contributions.
        norm: :attr:`RelevanceRule.norm`: "pass" (relevance crosses batch normalisation unchanged)
            or "affine" (the rule's :meth:`~RelevanceRule.affine_norm` on the layer's affine map).
        add_eps: :attr:`RelevanceRule.add_eps`, the stabiliser of the proportional split at
            residual additions.
        recompute: :attr:`RelevanceRule.recompute`: "none", "pointwise" or "all", which layers'
            transposed pass the second-order backward recomputes instead of keeping.

    Raises:
        ValueError: for an unknown ``kind`` or ``recompute``.
    """
    try:
        cls = RULES[kind]
    except KeyError:
        raise ValueError(f"unknown relevance rule {kind!r}; choose one of {', '.join(RULES)}") from None
    own = {f.name for f in fields(cls)}
    options = {k: v for k, v in dict(eps=eps, stabilizer=stabilizer, alpha=alpha, beta=beta).items() if k in own}
    return cls(norm=norm, add_eps=add_eps, recompute=recompute, **options)


# --------------------------------------------------------------------------------------------
# linear layers (F.linear, F.conv1d/2d/3d)


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
    """``out = y``; with ``switch`` on, the backward applies ``rule.linear`` to the layer ``op``."""

    @staticmethod
    def forward(ctx, x, weight, bias, y, rule: RelevanceRule, op: LinearOp, switch: RelevanceSwitch):
        ctx.rule, ctx.op, ctx.switch = rule, op, switch
        ctx.nonneg = rule.splits_signs and bool((x >= 0).all())
        ctx.has_bias = bias is not None
        ctx.dtype = y.dtype
        # only LRP-epsilon reads the layer's output; z+ and alpha-beta recompute their own parts,
        # so saving it would keep every layer's output alive twice
        saved = (x, weight) + ((y,) if rule.reads_output else ()) + ((bias,) if bias is not None else ())
        ctx.save_for_backward(*saved)
        return y.clone()

    @staticmethod
    def backward(ctx, grad):
        if not ctx.switch.relevance:
            return None, None, None, grad, None, None, None
        x, weight, *rest = ctx.saved_tensors
        y = rest.pop(0) if ctx.rule.reads_output else None
        bias = rest[0] if ctx.has_bias else None
        # under autocast the layer ran in a lower precision (``dtype``): apply the rule in that dtype
        dtype = ctx.dtype
        x, weight, grad = x.to(dtype), weight.to(dtype), grad.to(dtype)
        y = None if y is None else y.to(dtype)
        bias = None if bias is None else bias.to(dtype)
        r_in = ctx.rule.linear(ctx.op, x, weight, bias, y, grad, nonneg=ctx.nonneg, switch=ctx.switch)
        return r_in, None, None, None, None, None, None


# --------------------------------------------------------------------------------------------
# normalisation layers (F.batch_norm)


class NormRule(torch.autograd.Function):
    """Batch normalisation ``y = a x + c`` (per channel).

    ``norm="pass"``: relevance passes unchanged (deep Taylor, as iNNvestigate does);
    ``norm="affine"``: the rule's :meth:`~RelevanceRule.affine_norm`, the input's share
    ``|a x| / (|a x| + |c| + eps)`` under z+ and LRP-epsilon and the alpha-beta split of
    ``(a x, c)`` under alpha-beta: relevance is shared between input and shift and never
    amplified by the epsilon rule.
    """

    @staticmethod
    def forward(ctx, x, y, scale, shift, rule: RelevanceRule, switch: RelevanceSwitch):
        ctx.rule, ctx.switch = rule, switch
        ctx.save_for_backward(x, scale, shift)
        return y.clone()

    @staticmethod
    def backward(ctx, grad):
        switch = ctx.switch
        if not switch.relevance:
            return None, grad, None, None, None, None
        if ctx.rule.passes_norm:
            switch.record("norm_pass", grad, grad)
            return grad, None, None, None, None, None
        x, scale, shift = ctx.saved_tensors
        r_in = ctx.rule.affine_norm(grad, scale * x, shift)
        if switch.tracing:
            switch.record("norm_affine", grad, r_in, grad - r_in)
        return r_in, None, None, None, None, None


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
    """``out = a + b``; relevance is split in proportion to the summands (stabilised by ``rule.add_eps``)."""

    @staticmethod
    def forward(ctx, a, b, total, rule: RelevanceRule, switch: RelevanceSwitch):
        ctx.rule, ctx.switch = rule, switch
        ctx.save_for_backward(a, b, total)
        return total.clone()

    @staticmethod
    def backward(ctx, grad):
        switch = ctx.switch
        if not switch.relevance:
            return None, None, grad, None, None
        a, b, total = ctx.saved_tensors
        total_stable = stabilize(total, ctx.rule.add_eps)
        ratio = grad / total_stable
        r_a, r_b = a * ratio, b * ratio
        if switch.tracing:
            switch.record("add", grad, r_a + r_b, ratio * (total_stable - total))
        return r_a, r_b, None, None, None
