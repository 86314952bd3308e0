"""sibnet's saliency maps against independent references (Captum, Zennit)."""

from __future__ import annotations

import copy

import pytest
import torch
from testnets import SmallCNN, install_torchvision_stub, no_inplace
from torch import nn

from sibnet import saliency
from sibnet.models import build_classifier

captum_attr = pytest.importorskip("captum.attr")


def rel_err(a, b):
    """max |a - b| relative to the reference map's maximum, per (image, class) map."""
    scale = b.abs().flatten(2).amax(-1).clamp_min(1e-30)
    return ((a - b).abs().flatten(2).amax(-1) / scale).max().item()


def captum_gradcam(model, layer, x, num_classes):
    model = no_inplace(copy.deepcopy(model))
    layer = model.get_submodule(layer)
    gc = captum_attr.LayerGradCam(model, layer)
    maps = []
    for c in range(num_classes):
        a = gc.attribute(x, target=c, relu_attributions=True)
        maps.append(captum_attr.LayerAttribution.interpolate(a, x.shape[2:], "bilinear"))
    return torch.cat(maps, dim=1)


@pytest.mark.parametrize("name,layer", [("densenet121", "class_layers.relu"), ("resnet18", "layer4")])
@pytest.mark.parametrize("size", [64, 96])
def test_gradcam_equals_captum(name, layer, size):
    torch.manual_seed(0)
    model = build_classifier(name, in_channels=1, num_classes=5).eval()
    x = torch.randn(2, 1, size, size)
    ours = saliency.gradcam(model, x)
    ref = captum_gradcam(model, layer, x, 5)
    assert ours.shape == (2, 5, size, size)
    assert ref.abs().amax() > 0
    assert rel_err(ours, ref) < 1e-5


def zennit_deep_taylor(model, x, num_classes):
    install_torchvision_stub()
    from zennit.attribution import Gradient
    from zennit.composites import LayerMapComposite
    from zennit.rules import Pass, ZPlus
    from zennit.types import BatchNorm, Linear

    model = no_inplace(copy.deepcopy(model))
    composite = LayerMapComposite([(BatchNorm, Pass()), (Linear, ZPlus(stabilizer=1e-12, zero_params="bias"))])
    maps = []
    with Gradient(model, composite) as attributor:
        for c in range(num_classes):
            out = torch.zeros(x.shape[0], num_classes, dtype=x.dtype)
            out[:, c] = 1
            _, rel = attributor(x.clone().requires_grad_(True), out)
            maps.append(rel.sum(1, keepdim=True))
    return torch.cat(maps, dim=1)


def test_deep_taylor_equals_zennit_small_net_float64():
    torch.manual_seed(0)
    model = SmallCNN(in_channels=2, num_classes=3).double().eval()
    for m in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(3, 2, 16, 16, dtype=torch.float64)
    ours = saliency.deep_taylor(model, x)
    ref = zennit_deep_taylor(model, x, 3)
    assert ref.abs().amax() > 0
    assert rel_err(ours, ref) < 1e-8


def test_deep_taylor_equals_zennit_densenet_float32():
    torch.manual_seed(0)
    model = build_classifier("densenet121", in_channels=1, num_classes=5).eval()
    x = torch.randn(2, 1, 64, 64)
    ours = saliency.deep_taylor(model, x)
    ref = zennit_deep_taylor(model, x, 5)
    assert rel_err(ours, ref) < 1e-5
