"""The relevance rules' building blocks against plain autograd formulas (float64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from testnets import DenseCNN
from torch import nn

from sibnet import saliency
from sibnet.saliency.linear_op import LinearOp
from sibnet.saliency.rules import AlphaBeta, Epsilon, RatioRelevance, Rule, ZPlus, stabilize

D = torch.float64

# (op, input shape, weight shape): linear with extra dims, 1-D/2-D/3-D convolutions with stride,
# padding, dilation and groups
LAYERS = [
    (LinearOp(), (3, 2, 5), (4, 5)),
    (LinearOp(1, (2,), (1,), (1,), 1), (3, 4, 9), (6, 4, 3)),
    (LinearOp(2, (1, 1), (1, 1), (1, 1), 1), (3, 4, 6, 5), (5, 4, 3, 3)),
    (LinearOp(2, (2, 1), (0, 1), (1, 2), 2), (3, 4, 7, 6), (6, 2, 2, 3)),
    (LinearOp(2, (1, 1), (0, 0), (1, 1), 1), (3, 6, 4, 4), (3, 6, 1, 1)),
    (LinearOp(3, (1, 2, 1), (1, 0, 1), (1, 1, 1), 1), (2, 3, 4, 5, 3), (4, 3, 3, 2, 3)),
]


def plain(r, x, w, z, op, eps):
    """The same rule as separate autograd operations (K relevance tensors stacked on the batch)."""
    k = r.shape[0] // x.shape[0]
    s = (r.unflatten(0, (k, -1)) / stabilize(z, eps)).flatten(0, 1)
    return (op.input_grad(s, w, x.shape).unflatten(0, (k, -1)) * x).flatten(0, 1)


@pytest.mark.parametrize("layer", LAYERS, ids=lambda v: None if not isinstance(v, LinearOp) else f"dims{v.dims}")
@pytest.mark.parametrize("keep", [False, True])
def test_ratio_relevance_matches_plain_formula_and_gradcheck(layer, keep):
    op, x_shape, w_shape = layer
    torch.manual_seed(0)
    x = torch.randn(x_shape, dtype=D).requires_grad_(True)
    w = torch.randn(w_shape, dtype=D).requires_grad_(True)
    z = op.forward(x, w).detach().requires_grad_(True)
    r = torch.randn((2 * x_shape[0],) + tuple(z.shape[1:]), dtype=D).requires_grad_(True)  # K = 2
    out = RatioRelevance.apply(r, x, w, z, op, 1e-3, keep)[0]
    torch.testing.assert_close(out, plain(r, x, w, z, op, 1e-3), rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda *a: RatioRelevance.apply(*a, op, 1e-3, keep)[0], (r, x, w, z))
    # the gradient equals the plain formula's for a generic output weighting
    g = torch.randn_like(out)
    ours = torch.autograd.grad((RatioRelevance.apply(r, x, w, z, op, 1e-3, keep)[0] * g).sum(), (r, x, w, z))
    theirs = torch.autograd.grad((plain(r, x, w, z, op, 1e-3) * g).sum(), (r, x, w, z))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


POINTWISE = [
    (LinearOp(1, (1,), (0,), (1,), 1), (3, 4, 9), (6, 4, 1)),
    (LinearOp(2, (1, 1), (0, 0), (2, 2), 1), (3, 6, 4, 4), (3, 6, 1, 1)),
    (LinearOp(3, (1, 1, 1), (0, 0, 0), (1, 1, 1), 1), (2, 3, 4, 5, 3), (4, 3, 1, 1, 1)),
    (LinearOp(2, (2, 2), (0, 0), (1, 1), 1), (3, 6, 5, 5), (3, 6, 1, 1)),  # strided: not pointwise
    (LinearOp(2, (1, 1), (1, 1), (1, 1), 1), (3, 6, 4, 4), (3, 6, 1, 1)),  # padded: not pointwise
    (LinearOp(2, (1, 1), (0, 0), (1, 1), 2), (3, 6, 4, 4), (4, 3, 1, 1)),  # grouped: not pointwise
]


# without stride: dilated, grouped, padding beyond the dilated kernel's reach
STRIDE_ONE = [
    (LinearOp(1, (1,), (0,), (2,), 1), (3, 4, 9), (6, 4, 3)),  # no padding, dilated
    (LinearOp(2, (1, 1), (2, 1), (1, 2), 2), (3, 4, 7, 6), (6, 2, 3, 2)),  # grouped, dilated
    (LinearOp(2, (1, 1), (3, 0), (1, 1), 1), (3, 4, 7, 6), (5, 4, 3, 3)),  # padding 3 > 2
    (LinearOp(3, (1, 1, 1), (1, 0, 2), (1, 1, 2), 1), (2, 3, 4, 5, 6), (4, 3, 3, 2, 3)),
]


@pytest.mark.parametrize("layer", LAYERS + POINTWISE + STRIDE_ONE)
def test_input_grad_is_the_vjp_of_forward(layer):
    """The transposed pass (a matrix product for 1x1 convolutions) against autograd's VJP."""
    op, x_shape, w_shape = layer
    torch.manual_seed(1)
    x = torch.randn(x_shape, dtype=D).requires_grad_(True)
    w = torch.randn(w_shape, dtype=D)
    y = op.forward(x, w)
    s = torch.randn((2 * x_shape[0],) + tuple(y.shape[1:]), dtype=D)
    expected = torch.cat([torch.autograd.grad(y, x, s_k, retain_graph=True)[0] for s_k in s.split(x_shape[0])])
    torch.testing.assert_close(op.input_grad(s, w, x.shape), expected, rtol=1e-12, atol=1e-12)
    assert op.pointwise(w) == (layer in POINTWISE[:3] or layer is LAYERS[4])  # LAYERS[4]: a 1x1 convolution


def test_ratio_relevance_under_vmap_folds_the_classes():
    op, x_shape, w_shape = LAYERS[2]
    torch.manual_seed(1)
    x, w = torch.randn(x_shape, dtype=D).requires_grad_(True), torch.randn(w_shape, dtype=D).requires_grad_(True)
    z = op.forward(x, w)
    r = torch.randn((4,) + tuple(z.shape), dtype=D).requires_grad_(True)  # 4 mapped relevance tensors
    mapped = torch.func.vmap(lambda ri: RatioRelevance.apply(ri, x, w, z, op, 1e-6, False)[0])(r)
    looped = torch.stack([plain(ri, x, w, z, op, 1e-6) for ri in r])
    torch.testing.assert_close(mapped, looped, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(mapped)
    ours = torch.autograd.grad((mapped * g).sum(), (r, x, w), retain_graph=True)
    theirs = torch.autograd.grad((looped * g).sum(), (r, x, w))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layer", [LAYERS[0], LAYERS[3], LAYERS[5]], ids=["linear", "grouped", "conv3d"])
@pytest.mark.parametrize("kind", ["zplus", "alpha_beta"])
def test_sign_stacking_equals_two_passes(layer, kind):
    """Inputs of both signs: one stacked pass gives the sums of the x+ w+ and x- w- passes (also grouped)."""
    op, x_shape, w_shape = layer
    torch.manual_seed(2)
    x, w = torch.randn(x_shape, dtype=D), torch.randn(w_shape, dtype=D)
    bias = torch.randn(w_shape[0], dtype=D) if kind == "alpha_beta" else None
    z_out = op.forward(x, w, bias)
    r = torch.randn((3 * x_shape[0],) + tuple(z_out.shape[1:]), dtype=D)
    rule = Rule(kind=kind, stabilizer=1e-6)
    ours = rule.linear(op, x, w, bias, z_out, r, nonneg=False)

    def part(w_a, w_b, b):
        xp, xn = x.clamp(min=0), x.clamp(max=0)
        z = op.forward(xp, w_a, b) + op.forward(xn, w_b)
        k = r.shape[0] // x.shape[0]
        s = (r.unflatten(0, (k, -1)) / stabilize(z, 1e-6)).flatten(0, 1)
        back = (op.input_grad(s, w_a, x.shape).unflatten(0, (k, -1)) * xp
                + op.input_grad(s, w_b, x.shape).unflatten(0, (k, -1)) * xn)
        return back.flatten(0, 1)

    wp, wn = w.clamp(min=0), w.clamp(max=0)
    if kind == "zplus":
        expected = part(wp, wn, None)
    else:
        expected = 2 * part(wp, wn, bias.clamp(min=0)) - part(wn, wp, bias.clamp(max=0))
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["deep_taylor", "lrp_epsilon", "lrp_alpha_beta"])
def test_gradcheck_through_maps_of_a_dense_network(method):
    """Second-order gradients through concatenations, grouped/1x1/1-D convolutions and in-place ReLUs."""
    torch.manual_seed(0)
    model = DenseCNN(width=3).double().eval()
    with torch.no_grad():
        model.fc.weight.uniform_(-0.3, 1.0)
    x = torch.randn(2, 1, 6, 6, dtype=D)
    params = [model.grow.weight, model.group.weight, model.point.weight, model.row.weight]

    def f(*ws):
        # functional view of the parameters: swap them in, compute, swap back (state untouched)
        saved = {}
        try:
            for name, w in zip(["grow", "group", "point", "row"], ws):
                saved[name] = getattr(model, name)._parameters["weight"]
                getattr(model, name)._parameters["weight"] = w
            return saliency.get(method)(model, x, create_graph=True).pow(2).sum()
        finally:
            for name, p in saved.items():
                getattr(model, name)._parameters["weight"] = p

    inputs = tuple(p.detach().clone().requires_grad_(True) for p in params)
    assert saliency.get(method)(model, x).abs().amax() > 0
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


def _saved_bytes(recompute):
    """The maps, and the elements that their graph keeps for the second-order backward."""
    torch.manual_seed(0)
    model = DenseCNN(width=4).double().train()
    x = torch.randn(4, 1, 16, 16, dtype=D)
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.numel()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        maps = saliency.deep_taylor(model, x, create_graph=True, recompute=recompute)
    return maps, sum(seen.values())


def test_recompute_modes_give_the_same_maps_and_trade_memory():
    maps, kept = {}, {}
    for mode in ("none", "pointwise", "all"):
        maps[mode], kept[mode] = _saved_bytes(mode)
    for mode in ("pointwise", "all"):
        torch.testing.assert_close(maps[mode], maps["none"], rtol=1e-12, atol=1e-12)
    assert kept["all"] < kept["pointwise"] < kept["none"]


def test_recompute_modes_parameter_gradients_agree():
    torch.manual_seed(0)
    model = DenseCNN(width=3).double().train()
    x = torch.randn(3, 1, 12, 12, dtype=D)
    out = {}
    for mode in ("none", "pointwise", "all"):
        maps = saliency.deep_taylor(model, x, create_graph=True, recompute=mode)
        score = (maps.flatten(2).softmax(-1) * torch.linspace(0, 1, 144, dtype=D)).sum()
        out[mode] = torch.autograd.grad(score, list(model.parameters()), allow_unused=True)
    for mode in ("pointwise", "all"):
        for a, b in zip(out[mode], out["none"]):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


def test_bad_recompute_is_named():
    with pytest.raises(ValueError, match="recompute must be one of none, pointwise, all, got 'some'"):
        saliency.deep_taylor(DenseCNN(), torch.randn(1, 1, 8, 8), recompute="some")


def test_rule_factory_builds_the_named_rule_with_its_own_options():
    assert Rule() == ZPlus()
    assert Rule(kind="epsilon", eps=1e-3, stabilizer=5.0, norm="affine") == Epsilon(eps=1e-3, norm="affine")
    assert Rule(kind="alpha_beta", alpha=3.0, beta=2.0, eps=7.0, recompute="all") == \
        AlphaBeta(alpha=3.0, beta=2.0, recompute="all")
    with pytest.raises(ValueError, match="unknown relevance rule 'z'; choose one of zplus, epsilon, alpha_beta"):
        Rule(kind="z")
    with pytest.raises(ValueError, match="recompute must be one of"):
        Epsilon(recompute="some")


def test_the_switch_belongs_to_its_pass():
    """A pass's Functions read their own pass's switch: relevance while ``relevance_enabled`` runs for
    that pass, also where autograd runs the backward on another thread; another pass's switch leaves
    them computing the ordinary gradient."""
    import threading

    from sibnet.saliency.relevance import RelevanceMode
    from sibnet.saliency.switch import relevance_enabled

    torch.manual_seed(0)
    model = DenseCNN(width=3).double().eval()
    leaf = torch.randn(2, 1, 6, 6, dtype=D, requires_grad=True)
    with RelevanceMode(ZPlus()) as a:
        logits_a = model(leaf)
    with RelevanceMode(ZPlus()):
        logits_b = model(leaf)
    seed = torch.zeros_like(logits_a)
    seed[:, 0] = 1.0
    plain = torch.autograd.grad(model(leaf), leaf, seed)[0]

    def grad(logits):
        return torch.autograd.grad(logits, leaf, seed, retain_graph=True)[0]

    with relevance_enabled(a.switch):
        r_a, g_b = grad(logits_a), grad(logits_b)
        on_thread = {}
        worker = threading.Thread(target=lambda: on_thread.setdefault("r", grad(logits_a)))
        worker.start()
        worker.join()
    assert not a.switch.relevance
    torch.testing.assert_close(g_b, plain, rtol=0, atol=0)
    torch.testing.assert_close(grad(logits_a), plain, rtol=0, atol=0)
    assert not torch.allclose(r_a, plain)
    torch.testing.assert_close(on_thread["r"], r_a, rtol=0, atol=0)


def test_cat_and_relu_rules_keep_pytorch_semantics():
    """The intercepted cat/ReLU calls return PyTorch's values and training gradients, in place where asked."""
    from sibnet.saliency.relevance import RelevanceMode

    torch.manual_seed(0)
    a = torch.randn(2, 3, 4, dtype=D, requires_grad=True)
    b = torch.randn(2, 2, 4, dtype=D, requires_grad=True)

    def f(a, b):
        h = torch.cat([a * 1, b * 1], 1)
        h2 = h.clone()
        F.relu(h2, inplace=True)
        return torch.cat((torch.relu(h), h2, torch.concat([a, a], dim=-1)[..., :4]), dim=-2).pow(2).sum()

    expected = f(a, b)
    g_expected = torch.autograd.grad(expected, (a, b))
    with RelevanceMode(Rule()):
        got = f(a, b)
    g_got = torch.autograd.grad(got, (a, b))
    torch.testing.assert_close(got, expected)
    for u, v in zip(g_got, g_expected):
        torch.testing.assert_close(u, v)


def test_saliency_options_are_checked_when_the_loss_is_built():
    from sibnet.errors import ConfigError
    from sibnet.losses import SIBNetLoss

    model = DenseCNN()
    with pytest.raises(ConfigError, match="recompute='bogus': choose one of none, pointwise, all"):
        SIBNetLoss(model, saliency="deep_taylor", saliency_options={"recompute": "bogus"})
    with pytest.raises(ConfigError, match="'foo' is not an option of lrp_epsilon; its options: eps, start, recompute"):
        SIBNetLoss(model, saliency="lrp_epsilon", saliency_options={"foo": 1})
    with pytest.raises(ConfigError, match="'recompute' is not an option of gradcam"):
        SIBNetLoss(model, saliency="gradcam", saliency_options={"recompute": "all"})
    SIBNetLoss(model, saliency="gradcam", saliency_options={"upsample": False})
    # a user's callable takes what it takes
    SIBNetLoss(model, saliency=lambda m, x, **kw: saliency.gradcam(m, x), saliency_options={"anything": 1})
    # the modes give the same loss
    torch.manual_seed(0)
    x, y = torch.randn(4, 1, 16, 16), (torch.rand(4, 3) > 0.5).float()
    totals = [SIBNetLoss(model.train(), saliency="deep_taylor", saliency_options={"recompute": mode})(x, y)[0]
              for mode in ("none", "all")]
    torch.testing.assert_close(totals[0], totals[1])


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("geometry", [dict(kernel_size=3, stride=2, padding=1),
                                      dict(kernel_size=2, stride=2, dilation=2, ceil_mode=True)],
                         ids=["pad", "dil-ceil"])
def test_max_pool_relevance_is_pytorchs_gradient_for_all_classes(dims, geometry):
    """MaxPoolGrad: K relevance tensors scattered to the window winners at once, as autograd does
    one at a time; its derivative (gradcheck) and its vmap rule (against a loop)."""
    from sibnet.saliency.memory import MaxPoolGrad

    pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[dims - 1]
    torch.manual_seed(0)
    x = torch.randn((2, 3) + (5,) * dims, dtype=D, requires_grad=True)
    y, idx = pool(x, **geometry, return_indices=True)
    r = torch.randn((2 * 2,) + tuple(y.shape[1:]), dtype=D, requires_grad=True)  # K = 2
    expected = torch.cat([torch.autograd.grad(y, x, r_k, retain_graph=True)[0] for r_k in r.split(2)])
    torch.testing.assert_close(MaxPoolGrad.apply(r, idx, x.shape), expected, rtol=0, atol=0)
    assert torch.autograd.gradcheck(lambda r_: MaxPoolGrad.apply(r_, idx, x.shape), (r,))
    stacked = r.detach().unflatten(0, (2, -1))
    mapped = torch.func.vmap(lambda r_: MaxPoolGrad.apply(r_, idx, x.shape))(stacked)
    torch.testing.assert_close(mapped, torch.stack([MaxPoolGrad.apply(s, idx, x.shape) for s in stacked]))


def test_max_pool_rule_keeps_maps_and_gradients(monkeypatch):
    """A network with max pooling: maps and parameter gradients with the MaxPool rule equal those
    of PyTorch's own max-pooling gradient (the interception switched off)."""
    from sibnet.saliency import relevance

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, 1), nn.Conv2d(4, 6, 3),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3)).double()
    x = torch.randn(2, 1, 9, 9, dtype=D)

    def run():
        model.zero_grad(set_to_none=True)
        maps = saliency.get("deep_taylor")(model, x, create_graph=True)
        maps.pow(2).sum().backward()
        return maps.detach(), [p.grad for p in model.parameters()]

    ours = run()
    monkeypatch.setattr(relevance, "_MAXPOOL", {})
    theirs = run()
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-12, atol=1e-12)
    assert all(ours[1][i] is not None for i in (0, 2, 4))  # the three weights
    for a, b in zip(ours[1], theirs[1]):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


class ReluConsumers(nn.Module):
    """ReLU outputs with every kind of consumer: a convolution only (in place and not), a convolution
    and a residual addition, max pooling (windows of zeros: the mask matters there), a concatenation
    beside a convolution, and pooling before the classifier."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1)
        self.c4, self.c5 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(8, 5, 1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(9, 3)
        with torch.no_grad():
            self.c4.bias.fill_(-0.1)  # mostly negative: whole pooling windows of zeros

    def forward(self, x):
        a = F.relu(self.c1(x), inplace=True)  # -> c2 only
        b = F.relu(self.bn(self.c2(a)))  # -> c3 and the residual addition
        h = self.c3(b) + b
        p = F.max_pool2d(F.relu(self.c4(h)), 2)  # -> max pooling
        q = F.relu(p)  # -> concatenation and c5
        r = self.c5(torch.cat([q, p], 1)) + self.c5(torch.cat([p, q], 1))
        # -> pooling; average pooling also hands relevance to the zeros of p (its gradient)
        return self.fc(torch.cat([F.adaptive_avg_pool2d(F.relu(r), 1), F.adaptive_avg_pool2d(p, 1)], 1).flatten(1))


@pytest.mark.parametrize("method", ["deep_taylor", "lrp_epsilon", "lrp_alpha_beta"])
def test_relu_masks_are_skipped_only_where_they_change_nothing(monkeypatch, method):
    """The ReLU's mask is skipped in the relevance pass exactly where every consumer of its output
    multiplies by it; maps and second-order parameter gradients equal those with every mask applied."""
    from sibnet.saliency import memory

    torch.manual_seed(0)
    model = ReluConsumers().double().eval()
    x = torch.randn(2, 1, 8, 8, dtype=D)
    uses = []
    init = memory.ReluUse.__init__
    monkeypatch.setattr(memory.ReluUse, "__init__", lambda self: (init(self), uses.append(self))[0])

    def run():
        model.zero_grad(set_to_none=True)
        uses.clear()
        maps = saliency.get(method)(model, x, create_graph=True)
        (maps.pow(2).sum() + maps.sum()).backward()
        return maps.detach(), [p.grad for p in model.parameters()], [u.masks_nothing for u in uses]

    ours = run()
    assert ours[2] == [True, True, False, False, False]
    monkeypatch.setattr(memory.ReluUse, "masks_nothing", property(lambda self: False))
    theirs = run()
    assert not any(theirs[2])
    assert ours[0].abs().sum() > 0
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-12, atol=1e-12)
    for a, b in zip(ours[1], theirs[1]):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # the pooling windows of zeros are there: without the mask at the max pooling the maps would differ
    monkeypatch.setattr(memory.ReluUse, "masks_nothing", property(lambda self: True))
    assert not torch.allclose(run()[0], ours[0])
