"""Class-contrastive relevance (CLRP, SGLRP) against a direct computation of the papers' formulas.

The reference runs, for every target class t, two relevance passes seeded exactly as the papers
and the SGLRP authors' code seed them (target at its score or its softmax gradient, the dual
classes at their weights), then forms ReLU(R_t - R_dual * sum(R_t) / sum(R_dual)). The library
instead combines the K one-hot maps of ONE pass; both must agree.
"""

from __future__ import annotations

import pytest
import torch
from testnets import SmallCNN

from sibnet import saliency
from sibnet.errors import ConfigError
from sibnet.saliency.batched import batched_vjp
from sibnet.saliency.relevance import RelevanceMode
from sibnet.saliency.rules import Rule
from sibnet.saliency.switch import relevance_enabled

RULES = {
    "deep_taylor": Rule(kind="zplus", stabilizer=1e-12, norm="pass"),
    "lrp_epsilon": Rule(kind="epsilon", eps=1e-6, norm="affine"),
    "lrp_alpha_beta": Rule(kind="alpha_beta", alpha=2.0, beta=1.0, stabilizer=1e-6, norm="affine"),
}


def reference(model, x, method, contrast, start):
    """(B, K, H, W) contrastive maps, one target at a time, with the papers' own start vectors."""
    rule = RULES[method]
    leaf = x.detach().requires_grad_(True)
    with RelevanceMode(rule) as mode:
        logits = model(leaf)
    mode.consumed_outside(logits)
    b, k = logits.shape
    z = logits.detach()
    y = torch.softmax(z, 1)
    out = []
    for t in range(k):
        target = torch.zeros_like(z)
        dual = torch.zeros_like(z)
        others = [i for i in range(k) if i != t]
        if contrast == "clrp":  # target at its score (one-hot: 1), others at score / (K - 1)
            score = torch.ones(b, dtype=z.dtype) if start == "one_hot" else z[:, t].relu()
            target[:, t] = score
            for i in others:
                dual[:, i] = score / (k - 1)
        else:  # SGLRP: y_t (1 - y_t) + 1e-8 and y_t y_i
            target[:, t] = 1.0 if start == "one_hot" else y[:, t] * (1 - y[:, t]) + 1e-8
            for i in others:
                dual[:, i] = y[:, t] * y[:, i]
        with relevance_enabled(mode.switch, None):
            r = batched_vjp(logits, leaf, torch.stack([target, dual]), create_graph=False)
        r_t, r_d = r[0].sum(1), r[1].sum(1)  # (B, H, W)
        s_t = r_t.flatten(1).sum(1).reshape(b, 1, 1)
        s_d = r_d.flatten(1).sum(1).reshape(b, 1, 1)
        out.append((r_t - r_d * s_t / s_d).relu())
    return torch.stack(out, 1)


@pytest.mark.parametrize("method", list(RULES))
@pytest.mark.parametrize("contrast", ["clrp", "sglrp"])
@pytest.mark.parametrize("start", ["one_hot", "relu_logit"])
def test_contrast_equals_direct_dual_passes(method, contrast, start):
    torch.manual_seed(3)
    model = SmallCNN(in_channels=1, num_classes=4).eval()
    x = torch.rand(3, 1, 16, 16)
    fn = saliency.get(method)
    maps = fn(model, x, contrast=contrast, start=start)
    ref = reference(model, x, method, contrast, start)
    assert maps.shape == ref.shape == (3, 4, 16, 16)
    scale = ref.abs().amax().clamp_min(1e-30)
    assert ((maps - ref).abs().amax() / scale).item() < 1e-4
    assert maps.amax() > 0
    # chosen targets: the same maps (the dual still uses every class)
    picked = fn(model, x, contrast=contrast, start=start, targets=[3, 1])
    assert torch.allclose(picked, maps[:, [3, 1]], atol=1e-6 * float(scale))


def test_contrast_makes_zplus_maps_class_specific():
    torch.manual_seed(0)
    model = SmallCNN(in_channels=1, num_classes=4).eval()
    x = torch.rand(4, 1, 16, 16)

    def mean_pair_cosine(m):
        f = torch.nn.functional.normalize(m.flatten(2), dim=2)
        c = f @ f.transpose(1, 2)
        i, j = torch.triu_indices(4, 4, 1)
        return c[:, i, j].mean().item()

    plain = mean_pair_cosine(saliency.deep_taylor(model, x))
    clrp = mean_pair_cosine(saliency.deep_taylor(model, x, contrast="clrp"))
    assert clrp < plain - 0.1, (plain, clrp)


@pytest.mark.parametrize("contrast", ["clrp", "sglrp"])
def test_contrast_gradcheck(contrast):
    torch.manual_seed(0)
    model = SmallCNN(in_channels=1, num_classes=3, width=3).double().eval()
    x = torch.rand(2, 1, 10, 10, dtype=torch.float64)
    fn = saliency.deep_taylor

    def f(hw, cw):
        old = model.head.weight, model.features[0].weight
        try:
            model.head._parameters["weight"], model.features[0]._parameters["weight"] = hw, cw
            return fn(model, x, create_graph=True, contrast=contrast).pow(2).sum()
        finally:
            model.head._parameters["weight"], model.features[0]._parameters["weight"] = old

    inputs = (model.head.weight.detach().clone().requires_grad_(True),
              model.features[0].weight.detach().clone().requires_grad_(True))
    assert fn(model, x, contrast=contrast).amax() > 0
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_contrast_option_is_checked():
    with pytest.raises(ConfigError, match="contrast='clrp2'"):
        saliency.check_options("deep_taylor", {"contrast": "clrp2"})
    with pytest.raises(ConfigError, match="not an option of gradcam"):
        saliency.check_options("gradcam", {"contrast": "clrp"})
    saliency.check_options("lrp_epsilon", {"contrast": "sglrp"})


def test_gradcam_constant_weights_keep_values_and_cut_the_weight_path():
    torch.manual_seed(0)
    model = SmallCNN(in_channels=1, num_classes=3).eval()
    with torch.no_grad():
        model.head.weight.uniform_(-0.3, 1.0)
    x = torch.rand(2, 1, 16, 16)
    a = saliency.gradcam(model, x, create_graph=True)
    b = saliency.gradcam(model, x, create_graph=True, weight_grad=False)
    assert torch.allclose(a, b)
    # with constant weights, the head weight gets no gradient from the maps (its only path is the weights)
    g = torch.autograd.grad(b.sum(), model.head.weight, allow_unused=True)[0]
    assert g is None or g.abs().amax() == 0
    g_full = torch.autograd.grad(a.sum(), model.head.weight)[0]
    assert g_full.abs().amax() > 0
