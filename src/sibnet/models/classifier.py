"""Classifier factory: MONAI DenseNet-121 and ResNet-18/50/101, 2D, any input channels."""

from __future__ import annotations

import torch.nn as nn

from ..errors import ConfigError

CLASSIFIERS = ("densenet121", "resnet18", "resnet50", "resnet101", "densenet121-se", "densenet121-cbam")


def build_classifier(name: str = "densenet121", in_channels: int = 1, num_classes: int = 5, *,
                     spatial_dims: int = 2, dropout: float = 0.0) -> nn.Module:
    """Build a classifier whose ``forward(x)`` returns logits (B, num_classes).

    The ResNets use torchvision's stem (7x7 convolution, stride 2, then max pooling) so that
    torchvision ImageNet state dicts map onto them.
    """
    from monai.networks import nets

    name = name.lower()
    if name == "densenet121":
        return nets.DenseNet121(spatial_dims=spatial_dims, in_channels=in_channels,
                                out_channels=num_classes, dropout_prob=dropout)
    if name in ("densenet121-se", "densenet121-cbam"):  # attention after each dense block
        from .attention import densenet121_attention

        return densenet121_attention(name.split("-")[1], in_channels, num_classes, dropout=dropout)
    if name in ("resnet18", "resnet50", "resnet101"):
        factory = getattr(nets, name)
        return factory(spatial_dims=spatial_dims, n_input_channels=in_channels, num_classes=num_classes,
                       conv1_t_size=7, conv1_t_stride=2)
    raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(CLASSIFIERS)}")
