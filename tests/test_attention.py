"""SE and CBAM DenseNet-121 variants: placement, shapes, gating by hand, saliency maps, checkpoint round trip."""

import pytest
import torch
import torch.nn as nn

from sibnet.errors import ConfigError
from sibnet.models import build_classifier
from sibnet.models.attention import CBAM, ChannelAttention, SpatialAttention, insert_attention

torch.set_num_threads(1)


@pytest.mark.parametrize("kind,channels", [("se", (256, 512, 1024, 1024)), ("cbam", (256, 512, 1024, 1024))])
def test_placement_and_shapes(kind, channels):
    net = build_classifier(f"densenet121-{kind}", 1, 5)
    names = [n for n, _ in net.features.named_children()]
    for i in range(1, 5):
        assert names[names.index(f"denseblock{i}") + 1] == f"attention{i}"
    # the plain DenseNet's module names are unchanged, so its weights map one to one
    plain = build_classifier("densenet121", 1, 5)
    extra = set(net.state_dict()) - set(plain.state_dict())
    assert set(plain.state_dict()) <= set(net.state_dict())
    assert extra and all(k.startswith("features.attention") for k in extra)
    # channel counts of the gates match the dense blocks' outputs
    seen = []
    for i in range(1, 5):
        att = getattr(net.features, f"attention{i}")
        lin = next(m for m in att.modules() if isinstance(m, nn.Linear))
        seen.append(lin.in_features)
    assert tuple(seen) == channels
    net.eval()
    out = net(torch.rand(2, 1, 64, 64))
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    assert net.model_name == f"densenet121-{kind}"


def test_channel_attention_by_hand():
    torch.manual_seed(0)
    att = ChannelAttention(8, reduction=4)
    x = torch.randn(3, 8, 5, 6)
    mlp = lambda v: att.mlp[2](torch.relu(att.mlp[0](v)))  # noqa: E731
    gate = torch.sigmoid(mlp(x.mean((2, 3))) + mlp(x.flatten(2).max(2).values))
    torch.testing.assert_close(att(x), x * gate[:, :, None, None])


def test_spatial_attention_by_hand():
    torch.manual_seed(1)
    att = SpatialAttention(7)
    x = torch.randn(2, 4, 9, 9)
    desc = torch.stack([x.mean(1), x.max(1).values], 1)
    gate = torch.sigmoid(nn.functional.conv2d(desc, att.conv.weight, padding=3))
    torch.testing.assert_close(att(x), x * gate)


def test_se_matches_squeeze_excitation_formula():
    net = build_classifier("densenet121-se", 1, 3)
    se = net.features.attention1
    x = torch.randn(2, 256, 4, 4)
    lin = [m for m in se.modules() if isinstance(m, nn.Linear)]
    assert lin[0].out_features == 256 // 16
    gate = torch.sigmoid(lin[1](torch.relu(lin[0](x.mean((2, 3))))))
    torch.testing.assert_close(se(x), x * gate[:, :, None, None])


@pytest.mark.parametrize("kind", ["se", "cbam"])
def test_attention_changes_activations(kind):
    """Same backbone weights with and without the gates: the gated block outputs differ, and
    zeroing the gate's last layer makes a constant 0.5 gate (SE) in the gated positions."""
    torch.manual_seed(0)
    net = build_classifier(f"densenet121-{kind}", 1, 5).eval()
    x = torch.rand(2, 1, 64, 64)
    feats = {}
    hooks = [getattr(net.features, f"denseblock{i}").register_forward_hook(
        lambda m, i, o, k=i: feats.__setitem__(f"in{k}", o)) for i in range(1, 5)]
    hooks += [getattr(net.features, f"attention{i}").register_forward_hook(
        lambda m, i, o, k=i: feats.__setitem__(f"out{k}", o)) for i in range(1, 5)]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    for i in range(1, 5):
        assert not torch.allclose(feats[f"in{i}"], feats[f"out{i}"])
        live = feats[f"in{i}"].abs() > 1e-3
        ratio = feats[f"out{i}"][live] / feats[f"in{i}"][live]
        # gates are sigmoids in (0, 1) (CBAM: product of two sigmoids)
        assert ratio.min() > 0 and ratio.max() < 1
    if kind == "se":
        last = [m for m in net.features.attention1.modules() if isinstance(m, nn.Linear)][-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.zero_()
        y = torch.rand(1, 256, 3, 3)
        torch.testing.assert_close(net.features.attention1(y), 0.5 * y)


@pytest.mark.parametrize("kind", ["se", "cbam"])
@pytest.mark.parametrize("method", ["gradcam", "deep_taylor", "lrp_epsilon"])
def test_saliency_methods_run(kind, method):
    from sibnet.saliency import get

    torch.manual_seed(0)
    net = build_classifier(f"densenet121-{kind}", 1, 3)
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.rand(2, 1, 32, 32)
    maps = get(method)(net, x, create_graph=True)
    assert maps.shape == (2, 3, 32, 32)
    assert torch.isfinite(maps).all() and maps.abs().sum() > 0
    # differentiable w.r.t. the attention parameters
    att = [p for n, p in net.named_parameters() if "attention" in n]
    grads = torch.autograd.grad(maps.pow(2).sum(), att, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_checkpoint_round_trip(tmp_path):
    from sibnet.data.base import DatasetInfo
    from sibnet.training.checkpoint import FORMAT, VERSION, load_model_from_checkpoint, model_meta, save_checkpoint

    net = build_classifier("densenet121-cbam", 1, 2).eval()
    info = DatasetInfo("toy", ("a", "b"))
    meta = model_meta(model_name=net.model_name, info=info, image_size=32)
    save_checkpoint(tmp_path / "m.pt", {"format": FORMAT, "version": VERSION, "model": net.state_dict(),
                                        "meta": meta})
    loaded, meta2 = load_model_from_checkpoint(tmp_path / "m.pt")
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x))
    assert meta2["model_name"] == "densenet121-cbam"


def test_unknown_attention():
    with pytest.raises(ConfigError, match="unknown attention"):
        insert_attention(build_classifier("densenet121", 1, 2), "eca")
    assert isinstance(CBAM(16).channel, ChannelAttention)
