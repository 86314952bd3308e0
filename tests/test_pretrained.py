"""--pretrained: torchvision-style state dicts (key names and shapes written out here by hand from
torchvision's architecture definitions) mapped onto the MONAI classifiers."""

from __future__ import annotations

import pytest
import torch

from sibnet.errors import SibnetError
from sibnet.models import build_classifier
from sibnet.models.pretrained import load_pretrained, map_state_dict, torchvision_to_monai

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(prefix, c, out, old=False):
    for s in BN:
        if old and s == "num_batches_tracked":
            continue
        out[f"{prefix}.{s}"] = (c,) if s != "num_batches_tracked" else ()


def densenet121_shapes(old_names=False) -> dict[str, tuple]:
    """torchvision densenet121: growth 32, bn_size 4, blocks (6, 12, 24, 16), 64 initial features."""
    s: dict[str, tuple] = {"features.conv0.weight": (64, 3, 7, 7)}
    _bn("features.norm0", 64, s, old_names)
    nf = 64
    for b, n_layers in enumerate((6, 12, 24, 16), start=1):
        for i in range(1, n_layers + 1):
            p = f"features.denseblock{b}.denselayer{i}"
            cin = nf + (i - 1) * 32
            sep = "." if old_names else ""
            _bn(f"{p}.norm{sep}1", cin, s, old_names)
            s[f"{p}.conv{sep}1.weight"] = (128, cin, 1, 1)
            _bn(f"{p}.norm{sep}2", 128, s, old_names)
            s[f"{p}.conv{sep}2.weight"] = (32, 128, 3, 3)
        nf += n_layers * 32
        if b < 4:
            _bn(f"features.transition{b}.norm", nf, s, old_names)
            s[f"features.transition{b}.conv.weight"] = (nf // 2, nf, 1, 1)
            nf //= 2
    _bn("features.norm5", nf, s, old_names)
    s["classifier.weight"], s["classifier.bias"] = (1000, nf), (1000,)
    return s


def resnet_shapes(depth: int) -> dict[str, tuple]:
    """torchvision resnet18 (BasicBlock [2,2,2,2]) / resnet50 (Bottleneck [3,4,6,3], expansion 4)."""
    blocks, bottleneck = {18: ([2, 2, 2, 2], False), 50: ([3, 4, 6, 3], True)}[depth]
    s: dict[str, tuple] = {"conv1.weight": (64, 3, 7, 7)}
    _bn("bn1", 64, s)
    cin = 64
    for li, (n, width) in enumerate(zip(blocks, (64, 128, 256, 512)), start=1):
        cout = width * 4 if bottleneck else width
        for j in range(n):
            p = f"layer{li}.{j}"
            if bottleneck:
                s[f"{p}.conv1.weight"] = (width, cin, 1, 1)
                _bn(f"{p}.bn1", width, s)
                s[f"{p}.conv2.weight"] = (width, width, 3, 3)
                _bn(f"{p}.bn2", width, s)
                s[f"{p}.conv3.weight"] = (cout, width, 1, 1)
                _bn(f"{p}.bn3", cout, s)
            else:
                s[f"{p}.conv1.weight"] = (width, cin, 3, 3)
                _bn(f"{p}.bn1", width, s)
                s[f"{p}.conv2.weight"] = (width, width, 3, 3)
                _bn(f"{p}.bn2", width, s)
            if j == 0 and (cin != cout or li > 1):
                s[f"{p}.downsample.0.weight"] = (cout, cin, 1, 1)
                _bn(f"{p}.downsample.1", cout, s)
            cin = cout
    s["fc.weight"], s["fc.bias"] = (1000, cin), (1000,)
    return s


def random_state(shapes: dict[str, tuple], seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in shapes.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            out[k] = torch.rand(shape, generator=g) + 0.5
        else:
            out[k] = torch.randn(shape, generator=g) * 0.05
    return out


# hand-written expected MONAI names for a few torchvision keys
@pytest.mark.parametrize("tv, monai", [
    ("features.denseblock1.denselayer1.norm1.weight", "features.denseblock1.denselayer1.layers.norm1.weight"),
    ("features.denseblock3.denselayer24.conv.2.weight", "features.denseblock3.denselayer24.layers.conv2.weight"),
    ("features.denseblock2.denselayer5.norm.2.running_var",
     "features.denseblock2.denselayer5.layers.norm2.running_var"),
    ("features.transition2.conv.weight", "features.transition2.conv.weight"),
    ("classifier.bias", "class_layers.out.bias"),
])
def test_densenet_key_names(tv, monai):
    assert torchvision_to_monai(tv, "densenet121") == monai


@pytest.mark.parametrize("old_names", [False, True])
def test_densenet121_mapping_grey_input_and_new_head(tmp_path, old_names):
    src = random_state(densenet121_shapes(old_names))
    path = tmp_path / "densenet121.pth"
    torch.save(src, path)
    torch.manual_seed(1)
    model = build_classifier("densenet121", in_channels=1, num_classes=5)
    head_before = model.class_layers.out.weight.detach().clone()
    report = load_pretrained(model, path, "densenet121")
    assert report["head_reinitialised"] and report["first_conv"] == "summed over RGB"
    sd = model.state_dict()
    sep = "." if old_names else ""
    k_tv = f"features.denseblock4.denselayer16.conv{sep}2.weight"
    assert torch.equal(sd["features.denseblock4.denselayer16.layers.conv2.weight"], src[k_tv])
    assert torch.equal(sd["features.transition3.norm.running_var"], src["features.transition3.norm.running_var"])
    assert torch.equal(sd["features.conv0.weight"], src["features.conv0.weight"].sum(1, keepdim=True))
    assert torch.equal(model.class_layers.out.weight, head_before)  # 5 classes: left as initialised
    # a grey image through the 1-channel stem == the RGB weights on the image repeated 3 times
    x = torch.rand(2, 1, 32, 32)
    ref = torch.nn.functional.conv2d(x.repeat(1, 3, 1, 1), src["features.conv0.weight"], stride=2, padding=3)
    got = torch.nn.functional.conv2d(x, sd["features.conv0.weight"], stride=2, padding=3)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_densenet121_same_classes_and_rgb_loads_head(tmp_path):
    shapes = densenet121_shapes()
    shapes["classifier.weight"], shapes["classifier.bias"] = (3, 1024), (3,)
    src = random_state(shapes, seed=3)
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.items()}}, tmp_path / "w.pth")
    model = build_classifier("densenet121", in_channels=3, num_classes=3)
    report = load_pretrained(model, tmp_path / "w.pth", "densenet121")
    assert not report["head_reinitialised"] and report["first_conv"] == "copied"
    assert torch.equal(model.class_layers.out.weight, src["classifier.weight"])
    assert torch.equal(model.features.conv0.weight, src["features.conv0.weight"])


@pytest.mark.parametrize("depth", [18, 50])
def test_resnet_mapping(tmp_path, depth):
    src = random_state(resnet_shapes(depth), seed=depth)
    torch.save(src, tmp_path / "r.pth")
    model = build_classifier(f"resnet{depth}", in_channels=1, num_classes=2)
    report = load_pretrained(model, tmp_path / "r.pth", f"resnet{depth}")
    assert report["head_reinitialised"]
    sd = model.state_dict()
    assert report["loaded"] == len(src) - 2  # everything but the 1000-class head
    for k in ("layer4.1.conv2.weight", "layer2.0.downsample.1.running_mean", "bn1.bias"):
        assert torch.equal(sd[k], src[k])
    assert torch.equal(sd["conv1.weight"], src["conv1.weight"].sum(1, keepdim=True))
    # torchvision's shortcut convs have no bias; MONAI's is zeroed so the function is the same
    assert torch.count_nonzero(sd["layer2.0.downsample.0.bias"]) == 0


def test_mismatch_lists_keys(tmp_path):
    src = random_state(resnet_shapes(18))
    del src["layer3.1.bn2.weight"]
    src["layer9.extra.weight"] = torch.zeros(3)
    src["layer1.0.conv1.weight"] = torch.zeros(64, 64, 5, 5)
    torch.save(src, tmp_path / "bad.pth")
    model = build_classifier("resnet18", in_channels=1, num_classes=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(SibnetError) as err:
        load_pretrained(model, tmp_path / "bad.pth", "resnet18")
    msg = str(err.value)
    assert "\n" not in msg and "bad.pth" in msg
    assert "1 missing: layer3.1.bn2.weight" in msg
    assert "1 unexpected: layer9.extra.weight" in msg
    assert "layer1.0.conv1.weight (64, 64, 5, 5) vs (64, 64, 3, 3)" in msg
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched


def test_wrong_architecture_fails_clearly(tmp_path):
    torch.save(random_state(resnet_shapes(18)), tmp_path / "r18.pth")
    model = build_classifier("resnet50", in_channels=1, num_classes=2)
    with pytest.raises(SibnetError, match="does not fit a torchvision-style resnet50"):
        load_pretrained(model, tmp_path / "r18.pth", "resnet50")


def test_not_a_state_dict(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(SibnetError, match="expected a state dict"):
        load_pretrained(build_classifier("resnet18", 1, 2), tmp_path / "list.pth", "resnet18")
    with pytest.raises(SibnetError, match="no key mapping for model 'vgg16'"):
        map_state_dict({}, build_classifier("resnet18", 1, 2), "vgg16")
