"""Classifier factory: MONAI DenseNet-121 and ResNet-18/50/101, 2D, any input channels.

Width-scaled DenseNet-121 (``densenet121-x<m>``, the capacity study of the paper's Fig. 12)
------------------------------------------------------------------------------------------
``m`` (from :data:`MIN_MULTIPLIER` = 0.05 to :data:`MAX_MULTIPLIER` = 10) is a parameter
multiplier: the model has about ``m x P`` parameters, ``P`` being the parameter count of the
standard DenseNet-121 (growth rate 32, 64 initial features, bottleneck factor 4, blocks
(6, 12, 24, 16)) for the same input channels, output classes and spatial dimensions. Depth is
unchanged; only the width changes: for a width factor ``w`` the growth rate is
``max(1, round(32 w))`` and the initial features ``max(1, round(64 w))`` (Python's round, half to
even), so the parameter count grows about as ``w^2``.

The count of a width (:func:`densenet_parameter_formula`, equal to the ``numel`` of the parameters
of the built model, :func:`densenet_parameter_count`, which builds it on PyTorch's ``meta``
device; the tests compare the two) never decreases as ``w`` grows, so ``w`` is found by bisection
to the step where the count crosses ``m x P``; of the two channel configurations on either side
of that step the one whose count is closer to ``m x P`` is taken (the lower one on a tie).
``m = 1`` gives exactly the standard DenseNet-121. Channel counts are integers, so the count can
only be matched to about half a growth-rate step: a relative error of at most about 1/g (under 5%
for m = 0.05, 0.10, ..., 10 with one input channel and 5 classes; 0 for m = 1). The chosen
channels and the exact count are given by :func:`densenet121_width`.

``densenet121-se-x<m>`` and ``densenet121-cbam-x<m>`` are the same width-scaled networks with
squeeze-and-excitation or CBAM attention after each dense block (as ``densenet121-se`` and
``densenet121-cbam``); the attention adds a few percent to the count (:func:`parameter_count`
gives the built model's).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn

from ..errors import ConfigError
from .attention import densenet121_attention, insert_attention

CLASSIFIERS = ("densenet121", "resnet18", "resnet50", "resnet101", "densenet121-se", "densenet121-cbam")
WIDTH_PREFIX = "densenet121-x"  # densenet121-x<m>: DenseNet-121 with about m x its parameters
# the same widths with attention after each dense block
ATTENTION_WIDTH_PREFIXES = {"densenet121-se-x": "se", "densenet121-cbam-x": "cbam"}
MIN_MULTIPLIER, MAX_MULTIPLIER = 0.05, 10.0  # the range where the rule below matches m x P within 5%
GROWTH_RATE, INIT_FEATURES = 32, 64  # the standard DenseNet-121


def build_classifier(name: str = "densenet121", in_channels: int = 1, num_classes: int = 5, *,
                     spatial_dims: int = 2, dropout: float = 0.0) -> nn.Module:
    """Build a classifier whose ``forward(x)`` returns logits (B, num_classes).

    The ResNets use torchvision's stem (7x7 convolution, stride 2, then max pooling) so that
    torchvision ImageNet state dicts map onto them. ``densenet121-x<m>``: see the module doc.
    """
    from monai.networks import nets

    name = name.lower()
    if name == "densenet121":
        return nets.DenseNet121(spatial_dims=spatial_dims, in_channels=in_channels,
                                out_channels=num_classes, dropout_prob=dropout)
    prefix = next((p for p in (WIDTH_PREFIX, *ATTENTION_WIDTH_PREFIXES) if name.startswith(p)), None)
    if prefix is not None:
        width = densenet121_width(parse_width_name(name, prefix), in_channels, num_classes,
                                  spatial_dims=spatial_dims)
        net = nets.DenseNet121(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes,
                               init_features=width["init_features"], growth_rate=width["growth_rate"],
                               dropout_prob=dropout)
        if prefix in ATTENTION_WIDTH_PREFIXES:
            net = insert_attention(net, ATTENTION_WIDTH_PREFIXES[prefix])
            net.model_name = name
        return net
    if name in ("densenet121-se", "densenet121-cbam"):  # attention after each dense block
        return densenet121_attention(name.split("-")[1], in_channels, num_classes, dropout=dropout)
    if name in ("resnet18", "resnet50", "resnet101"):
        factory = getattr(nets, name)
        return factory(spatial_dims=spatial_dims, n_input_channels=in_channels, num_classes=num_classes,
                       conv1_t_size=7, conv1_t_stride=2)
    raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(CLASSIFIERS)}, {WIDTH_PREFIX}<m>, "
                      f"{', '.join(p + '<m>' for p in ATTENTION_WIDTH_PREFIXES)}")


def parse_width_name(name: str, prefix: str = WIDTH_PREFIX) -> float:
    """The multiplier ``m`` of ``<prefix><m>`` (a number in [MIN_MULTIPLIER, MAX_MULTIPLIER])."""
    text = name.lower()[len(prefix):]
    try:
        m = float(text)
    except ValueError:
        m = math.nan
    if not (math.isfinite(m) and MIN_MULTIPLIER <= m <= MAX_MULTIPLIER):
        raise ConfigError(f"model {name!r}: expected {prefix}<m> with a number {MIN_MULTIPLIER:g} <= m <= "
                          f"{MAX_MULTIPLIER:g} (the parameter multiplier, e.g. densenet121-x0.5)")
    return m


def width_name(multiplier: float, model: str = "densenet121") -> str:
    """``<model>-x<m>`` (``densenet121-x<m>`` by default) with ``m`` written as Python's ``%g``."""
    return f"{model}-x{float(multiplier):g}"


@functools.lru_cache(maxsize=None)
def parameter_count(name: str, in_channels: int = 1, num_classes: int = 5) -> int:
    """Number of parameters of the classifier ``name`` (built on PyTorch's meta device)."""
    with torch.device("meta"):
        net = build_classifier(name, in_channels, num_classes)
    return sum(p.numel() for p in net.parameters())


@functools.lru_cache(maxsize=None)
def densenet_parameter_count(growth_rate: int, init_features: int, in_channels: int, num_classes: int,
                             spatial_dims: int = 2) -> int:
    """Number of parameters of MONAI's DenseNet-121 with these widths (built on the meta device)."""
    from monai.networks import nets

    with torch.device("meta"):
        net = nets.DenseNet121(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes,
                               init_features=init_features, growth_rate=growth_rate)
    return sum(p.numel() for p in net.parameters())


def densenet_parameter_formula(growth_rate: int, init_features: int, in_channels: int, num_classes: int,
                               spatial_dims: int = 2, bn_size: int = 4, blocks=(6, 12, 24, 16)) -> int:
    """The same count in closed form (MONAI's layout: 7^d stem without bias, BatchNorm weight and
    bias, dense layers ``1x1 conv -> bn_size*g, 3^d conv -> g`` without bias, transitions halving
    the channels (floor), a final BatchNorm and a linear layer with bias)."""
    g, c, d = growth_rate, init_features, spatial_dims
    n = in_channels * c * 7 ** d + 2 * c
    for i, layers in enumerate(blocks):
        for j in range(layers):
            cj = c + j * g
            n += 2 * cj + cj * bn_size * g + 2 * bn_size * g + bn_size * g * g * 3 ** d
        c += layers * g
        n += 2 * c
        if i < len(blocks) - 1:
            n += c * (c // 2)
            c //= 2
    return n + c * num_classes + num_classes


def _channels(w: float) -> tuple[int, int]:
    return max(1, round(GROWTH_RATE * w)), max(1, round(INIT_FEATURES * w))


@functools.lru_cache(maxsize=None)
def densenet121_width(multiplier: float, in_channels: int = 1, num_classes: int = 5, *,
                      spatial_dims: int = 2) -> dict:
    """The channel widths of ``densenet121-x<multiplier>`` (rule in the module doc).

    Returns ``{"multiplier", "width", "growth_rate", "init_features", "parameters", "reference",
    "ratio"}``: ``width`` the width factor w of the chosen configuration's side of the step,
    ``reference`` P (the standard DenseNet-121) and ``ratio`` = parameters / P.
    """
    m = float(multiplier)
    if not (math.isfinite(m) and MIN_MULTIPLIER <= m <= MAX_MULTIPLIER):
        raise ConfigError(f"capacity multiplier: expected {MIN_MULTIPLIER:g} <= m <= {MAX_MULTIPLIER:g}, "
                          f"got {multiplier!r}")

    def count(w: float) -> int:
        return densenet_parameter_formula(*_channels(w), in_channels, num_classes, spatial_dims)

    reference = densenet_parameter_formula(GROWTH_RATE, INIT_FEATURES, in_channels, num_classes, spatial_dims)
    target = m * reference
    lo, hi = 0.0, 1.0
    while count(hi) < target:  # m <= 10 needs w of about sqrt(10)
        lo, hi = hi, 2 * hi
    for _ in range(60):  # count(lo) < target <= count(hi) (lo = 0 stands for "below every width")
        mid = (lo + hi) / 2
        if count(mid) < target:
            lo = mid
        else:
            hi = mid
    w = hi if lo == 0.0 or abs(count(hi) - target) < abs(count(lo) - target) else lo
    g, f = _channels(w)
    n = densenet_parameter_count(g, f, in_channels, num_classes, spatial_dims)  # the built model's count
    reference = densenet_parameter_count(GROWTH_RATE, INIT_FEATURES, in_channels, num_classes, spatial_dims)
    return {"multiplier": m, "width": w, "growth_rate": g, "init_features": f, "parameters": n,
            "reference": reference, "ratio": n / reference}
