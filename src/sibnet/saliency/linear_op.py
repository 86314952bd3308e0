"""The geometry of one linear layer call (``F.linear``, ``F.conv1d/2d/3d``) and its transposed passes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _tuple(value, n: int) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n


@dataclass(frozen=True)
class LinearOp:
    """The geometry of one linear layer call.

    ``dims=0`` is ``F.linear`` (the convolution arguments stay empty and unused); ``dims`` 1, 2 or 3
    is ``F.conv{dims}d`` with ``stride``, ``padding`` and ``dilation`` one integer per spatial
    dimension, and ``groups``.
    """

    dims: int = 0
    stride: tuple = ()
    padding: tuple = ()
    dilation: tuple = ()
    groups: int = 1

    @classmethod
    def conv(cls, dims: int, weight: torch.Tensor, stride=1, padding=0, dilation=1, groups=1) -> LinearOp:
        """The geometry of ``F.conv{dims}d(x, weight, bias, stride, padding, dilation, groups)``.

        Raises:
            NotImplementedError: for ``padding="same"`` where it is not symmetric.
        """
        stride, dilation = _tuple(stride, dims), _tuple(dilation, dims)
        if isinstance(padding, str):
            if padding == "valid":
                padding = 0
            elif padding == "same":
                pads = []
                for i in range(dims):
                    total = dilation[i] * (weight.shape[2 + i] - 1)
                    if total % 2 or stride[i] != 1:
                        raise NotImplementedError(
                            "relevance rules support padding='same' only where it is symmetric; "
                            "give the convolution explicit integer padding")
                    pads.append(total // 2)
                padding = tuple(pads)
        return cls(dims, stride, _tuple(padding, dims), dilation, int(groups))

    def pointwise(self, weight) -> bool:
        """A 1x1 convolution without stride, padding or groups: a matrix product over channels."""
        return self.dims > 0 and self.groups == 1 and all(k == 1 for k in weight.shape[2:]) \
            and all(s == 1 for s in self.stride) and all(p == 0 for p in self.padding)

    def forward(self, x, weight, bias=None):
        """The layer's output ``F.linear(x, weight, bias)`` or the convolution."""
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

    def stack_signs(self, x_a, x_b, w_a, w_b):
        """One layer input and weight for ``x_a w_a + x_b w_b``: both stacked along the input channels.

        Convolutions with groups interleave the two parts group by group, so group ``j`` sees
        ``[x_a_j, x_b_j]`` against ``[w_a_j, w_b_j]``. One convolution (and one transposed
        convolution) of the stacked pair gives the same sums as two, at about half the cost where the
        layer has few input channels (the first convolution of an image network).
        """
        if self.dims == 0:
            return torch.cat([x_a, x_b], dim=-1), torch.cat([w_a, w_b], dim=1)
        g = self.groups
        x = torch.cat([x_a.unflatten(1, (g, -1)), x_b.unflatten(1, (g, -1))], dim=2).flatten(1, 2)
        return x, torch.cat([w_a, w_b], dim=1)

    def unstack_signs(self, r):
        """The relevance of the stacked input of :meth:`stack_signs` summed back onto the layer input."""
        if self.dims == 0:
            return r.unflatten(-1, (2, -1)).sum(-2)
        return r.unflatten(1, (self.groups, 2, -1)).sum(2).flatten(1, 2)
