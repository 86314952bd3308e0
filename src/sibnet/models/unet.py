"""A U-Net whose encoder is a classifier backbone (section 2.1.4 of the paper: UNet_SIBNet).

The encoder is the convolutional part of a classifier from :func:`sibnet.models.build_classifier`
(or of a classifier checkpoint: :func:`sibnet.segmentation.train.unet_from_checkpoint`); the decoder
is new. Skip connections come from the backbone's stages, at strides 2, 4, 8, 16 and 32 of the input:

* DenseNet-121 (MONAI ``features``): after ``relu0`` (64 channels), ``denseblock1`` (256),
  ``denseblock2`` (512), ``denseblock3`` (1024) and the final ``norm5`` followed by the ReLU that
  the classifier applies before pooling (1024).
* ResNet-18/50/101 (MONAI, torchvision stem): after ``conv1``/``bn1``/``act`` (64), ``layer1``,
  ``layer2``, ``layer3`` and ``layer4`` (64/128/256/512 for ResNet-18, 256/512/1024/2048 otherwise).

Decoder: at each of the four upper levels MONAI ``UpSample`` (bilinear, with a 1x1 convolution to
the level's channels) doubles the resolution, the skip features are concatenated, and two 3x3
Conv-BatchNorm-ReLU blocks follow; a last ``UpSample`` back to the input resolution, one more
conv block and a 1x1 convolution give ``out_channels`` logits (default 2: background, gland).
Height and width of the input must be multiples of 32.

Frozen encoder (the default): its parameters have ``requires_grad=False``, it stays in eval mode
(BatchNorm uses and keeps its running statistics) whatever ``train()`` is called with, and its
forward runs without building a graph. ``freeze_encoder=False`` trains it with the decoder.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import ConfigError, SibnetError
from .classifier import build_classifier

__all__ = ["EncoderUNet", "build_unet", "encoder_channels", "BACKBONES"]

BACKBONES = ("densenet121", "resnet18", "resnet50", "resnet101")
DEFAULT_DECODER = (256, 128, 64, 32, 16)


def _densenet_stages(model: nn.Module) -> list[nn.Module]:
    f = model.features
    return [
        nn.Sequential(f.conv0, f.norm0, f.relu0),
        nn.Sequential(f.pool0, f.denseblock1),
        nn.Sequential(f.transition1, f.denseblock2),
        nn.Sequential(f.transition2, f.denseblock3),
        nn.Sequential(f.transition3, f.denseblock4, f.norm5, nn.ReLU()),
    ]


def _resnet_stages(model: nn.Module) -> list[nn.Module]:
    return [
        nn.Sequential(model.conv1, model.bn1, model.act),
        nn.Sequential(model.maxpool, model.layer1),
        model.layer2,
        model.layer3,
        model.layer4,
    ]


def encoder_stages(classifier: nn.Module, backbone: str) -> nn.ModuleList:
    """The five encoder stages (strides 2..32) of a classifier, sharing its modules (no copies)."""
    backbone = backbone.lower()
    if backbone == "densenet121":
        if not hasattr(classifier, "features"):
            raise ConfigError("unet: backbone 'densenet121' needs a MONAI DenseNet121 classifier")
        return nn.ModuleList(_densenet_stages(classifier))
    if backbone in ("resnet18", "resnet50", "resnet101"):
        if not hasattr(classifier, "layer4"):
            raise ConfigError(f"unet: backbone {backbone!r} needs a MONAI ResNet classifier")
        return nn.ModuleList(_resnet_stages(classifier))
    raise ConfigError(f"unet: unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")


def encoder_channels(stages: nn.ModuleList, in_channels: int) -> list[int]:
    """Channels of each stage's output, found with one small forward pass (eval mode, no grad)."""
    modes = [m.training for m in stages.modules()]
    stages.eval()
    try:
        with torch.no_grad():
            x = torch.zeros(1, in_channels, 64, 64)
            out = []
            for s in stages:
                x = s(x)
                out.append(int(x.shape[1]))
    finally:
        for m, t in zip(stages.modules(), modes):
            m.training = t
    return out


def _conv(cin: int, cout: int) -> nn.Module:
    from monai.networks.blocks import Convolution

    return Convolution(spatial_dims=2, in_channels=cin, out_channels=cout, kernel_size=3, act="RELU",
                       norm="BATCH", bias=False)


def _up(cin: int, cout: int) -> nn.Module:
    from monai.networks.blocks import UpSample

    return UpSample(spatial_dims=2, in_channels=cin, out_channels=cout, scale_factor=2, mode="nontrainable",
                    interp_mode="bilinear", align_corners=False)


class EncoderUNet(nn.Module):
    """U-Net with a classifier backbone as encoder; see the module doc.

    ``forward(x)``: (B, C, H, W) with H, W multiples of 32 -> logits (B, out_channels, H, W).
    ``encoder`` is the backbone's stages (a ``ModuleList``), ``decoder`` everything else.
    """

    def __init__(self, classifier: nn.Module, backbone: str, in_channels: int, *, out_channels: int = 2,
                 freeze_encoder: bool = True, decoder_channels=DEFAULT_DECODER):
        super().__init__()
        decoder_channels = tuple(int(c) for c in decoder_channels)
        if len(decoder_channels) != 5 or min(decoder_channels) < 1:
            raise ConfigError(f"unet: decoder_channels must be 5 positive numbers, got {decoder_channels}")
        self.backbone = backbone.lower()
        self.in_channels = int(in_channels)
        self.encoder = encoder_stages(classifier, self.backbone)
        enc = encoder_channels(self.encoder, self.in_channels)
        self.encoder_out_channels = tuple(enc)
        self.frozen = bool(freeze_encoder)
        if self.frozen:
            for p in self.encoder.parameters():
                p.requires_grad_(False)
            self.encoder.eval()
        ups, blocks = [], []
        cin = enc[4]
        for level in (3, 2, 1, 0):  # skip of stage `level`, decoder channel index 0..3
            c = decoder_channels[3 - level]
            ups.append(_up(cin, c))
            blocks.append(nn.Sequential(_conv(c + enc[level], c), _conv(c, c)))
            cin = c
        self.ups = nn.ModuleList(ups)
        self.blocks = nn.ModuleList(blocks)
        self.final_up = _up(cin, decoder_channels[4])
        self.final = nn.Sequential(_conv(decoder_channels[4], decoder_channels[4]),
                                   nn.Conv2d(decoder_channels[4], int(out_channels), kernel_size=1))

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five skip feature maps (strides 2, 4, 8, 16, 32)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise SibnetError(f"unet: input must be (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[-2] % 32 or x.shape[-1] % 32:
            raise SibnetError(f"unet: input height and width must be multiples of 32, got {tuple(x.shape[-2:])}")
        feats = []
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            for s in self.encoder:
                x = s(x)
                feats.append(x)
        return feats

    def decode(self, feats: list[torch.Tensor]) -> torch.Tensor:
        y = feats[4]
        for up, block, skip in zip(self.ups, self.blocks, (feats[3], feats[2], feats[1], feats[0])):
            y = block(torch.cat([up(y), skip], dim=1))
        return self.final(self.final_up(y))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def decoder_parameters(self):
        return [p for n, p in self.named_parameters() if not n.startswith("encoder.")]


def build_unet(backbone: str = "densenet121", in_channels: int = 3, *, out_channels: int = 2,
               freeze_encoder: bool = True, classifier: nn.Module | None = None,
               decoder_channels=DEFAULT_DECODER) -> EncoderUNet:
    """A U-Net on ``classifier``'s backbone, or on a freshly initialised classifier when it is None."""
    if classifier is None:
        if backbone.lower() not in BACKBONES:
            raise ConfigError(f"unet: unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
        classifier = build_classifier(backbone, in_channels, 2)
    return EncoderUNet(classifier, backbone, in_channels, out_channels=out_channels,
                       freeze_encoder=freeze_encoder, decoder_channels=decoder_channels)
