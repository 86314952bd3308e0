"""DenseNet-121 with channel attention (SE) or CBAM after each dense block (the paper's baselines).

Conventions
-----------
* The backbone is MONAI's ``DenseNet121`` (as :func:`sibnet.models.classifier.build_classifier`);
  an attention module named ``attention1`` .. ``attention4`` is inserted into ``features`` right
  after ``denseblock1`` .. ``denseblock4`` (before the transition / the final BatchNorm), so the
  module names of the plain DenseNet stay unchanged and its other weights map one to one.
* SE (Hu et al., CVPR 2018): MONAI's :class:`~monai.networks.blocks.ChannelSELayer`: global average
  pooling, Linear(C, C/r), ReLU, Linear(C/r, C), sigmoid, channel-wise rescaling; ``r = 16``.
* CBAM (Woo et al., ECCV 2018): channel attention (a shared MLP ``C -> C/r -> C`` applied to the
  global average- and max-pooled descriptors, summed, sigmoid), then spatial attention (a 7x7
  convolution over the channel-wise mean and max maps, sigmoid); each rescales its input.
* The gates are ordinary multiplications, so every saliency method of :mod:`sibnet.saliency` runs
  on these models unchanged (relevance rules apply to their convolutions and linear layers; the
  gating product keeps its plain gradient).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from ..errors import ConfigError

ATTENTION_KINDS = ("se", "cbam")


class ChannelAttention(nn.Module):
    """CBAM channel attention: ``x * sigmoid(MLP(avgpool(x)) + MLP(maxpool(x)))``."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = x.mean(dim=(2, 3))
        mx = x.amax(dim=(2, 3))
        gate = torch.sigmoid(self.mlp(avg) + self.mlp(mx))
        return x * gate[:, :, None, None]


class SpatialAttention(nn.Module):
    """CBAM spatial attention: ``x * sigmoid(conv7x7([mean_c(x), max_c(x)]))``."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        desc = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(desc))


class CBAM(nn.Module):
    """Convolutional block attention module: channel attention, then spatial attention."""

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7):
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


def make_attention(kind: str, channels: int, reduction: int = 16) -> nn.Module:
    if kind == "se":
        from monai.networks.blocks import ChannelSELayer

        return ChannelSELayer(spatial_dims=2, in_channels=channels, r=reduction)
    if kind == "cbam":
        return CBAM(channels, reduction)
    raise ConfigError(f"unknown attention {kind!r}; choose one of {', '.join(ATTENTION_KINDS)}")


def _channels_after(children: list[tuple[str, nn.Module]], index: int) -> int:
    """Channels leaving child ``index`` (a dense block) = features of the next child's first BatchNorm."""
    for _, module in children[index + 1:]:
        for sub in module.modules():
            if isinstance(sub, nn.BatchNorm2d):
                return int(sub.num_features)
    raise ConfigError("cannot find the channel count after a dense block (no BatchNorm follows it)")


def insert_attention(densenet: nn.Module, kind: str, reduction: int = 16) -> nn.Module:
    """Insert ``attention{i}`` after every ``denseblock{i}`` of a MONAI DenseNet (in place); returns it."""
    if kind not in ATTENTION_KINDS:
        raise ConfigError(f"unknown attention {kind!r}; choose one of {', '.join(ATTENTION_KINDS)}")
    children = list(densenet.features.named_children())
    new = []
    for i, (name, module) in enumerate(children):
        new.append((name, module))
        if name.startswith("denseblock"):
            new.append((name.replace("denseblock", "attention"),
                        make_attention(kind, _channels_after(children, i), reduction)))
    densenet.features = nn.Sequential(OrderedDict(new))
    return densenet


def densenet121_attention(kind: str, in_channels: int = 1, num_classes: int = 5, *, dropout: float = 0.0,
                          reduction: int = 16) -> nn.Module:
    """MONAI DenseNet-121 with ``kind`` ("se" or "cbam") attention after each dense block."""
    from monai.networks import nets

    net = nets.DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=num_classes,
                           dropout_prob=dropout)
    net = insert_attention(net, kind, reduction)
    net.model_name = f"densenet121-{kind}"
    return net


__all__ = ["ATTENTION_KINDS", "CBAM", "ChannelAttention", "SpatialAttention", "densenet121_attention",
           "insert_attention", "make_attention"]
