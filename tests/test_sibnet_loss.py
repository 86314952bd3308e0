"""SIBNetLoss on real classifiers: gradients everywhere, no side effects, SIBNet+, training behaviour."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from testnets import SmallCNN

from sibnet.errors import ConfigError
from sibnet.losses import DEFAULT_LAMBDAS, SIBNetLoss
from sibnet.models import build_classifier

METHODS = ["gradcam", "deep_taylor", "lrp_epsilon", "lrp_alpha_beta", "input_x_gradient"]
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def densenet():
    torch.manual_seed(0)
    return build_classifier("densenet121", in_channels=1, num_classes=5)


def _batch(b=4, size=40, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 1, size, size, generator=g)
    y = (torch.rand(b, k, generator=g) > 0.5).float()
    return x, y


def _grads(model):
    return {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()}


def test_one_step_on_densenet_reaches_every_parameter_and_keeps_bn_stats(densenet):
    x, y = _batch()
    base_model = copy.deepcopy(densenet).train()
    sib_model = copy.deepcopy(densenet).train()
    base_total, _ = SIBNetLoss(base_model, saliency=None)(x, y)
    base_total.backward()
    loss_fn = SIBNetLoss(sib_model, saliency="deep_taylor")
    total, terms = loss_fn(x, y)
    assert set(terms) == {"wce", "cd", "sc", "wce_w", "cd_w", "sc_w", "map_cos", "total", "logits"}
    assert terms["cd"] > 0 and terms["sc"] > 0
    torch.testing.assert_close(terms["wce"], base_total.detach())  # same logits, same classification loss
    total.backward()
    base_grads, sib_grads = _grads(base_model), _grads(sib_model)
    reached = [n for n, g in base_grads.items() if g is not None and g.abs().sum() > 0]
    assert "class_layers.out.weight" in reached and len(reached) == len(base_grads)
    for name in reached:
        assert sib_grads[name] is not None and sib_grads[name].abs().sum() > 0, name
        if name != "class_layers.out.bias":  # z+ ignores biases and Z is the head's input: no path from it
            assert not torch.equal(sib_grads[name], base_grads[name]), name  # the saliency terms contribute
    for (name, b), (_, s) in zip(base_model.named_buffers(), sib_model.named_buffers()):
        assert torch.equal(b, s), f"BatchNorm buffer {name} differs from a baseline step's"
    assert all(m.training for m in sib_model.modules())


@pytest.mark.parametrize("method", METHODS)
def test_saliency_terms_alone_reach_the_classifier_head(densenet, method):
    model = copy.deepcopy(densenet).train()
    x, _ = _batch(b=2, size=32)
    total, terms = SIBNetLoss(model, saliency=method)(x, None)
    assert terms["wce"] == 0
    total.backward()
    head = model.class_layers.out.weight.grad
    assert head is not None and head.abs().sum() > 0, method
    assert model.features.conv0.weight.grad.abs().sum() > 0


def test_embed_grad_maps_keeps_encoder_out_of_the_embedding_path():
    torch.manual_seed(0)
    x, y = _batch(b=3, size=16, k=3)
    grads = {}
    for mode in ("all", "maps"):
        model = SmallCNN().train()
        torch.manual_seed(0)
        model.load_state_dict(SmallCNN().state_dict())
        loss_fn = SIBNetLoss(model, saliency="gradcam", use_sc=False, embed_grad=mode)
        total, _ = loss_fn(x, None)
        total.backward()
        grads[mode] = model.features[0].weight.grad.clone()  # the encoder embeds the maps
        assert all(p.requires_grad for p in model.parameters())
    assert not torch.allclose(grads["all"], grads["maps"])


def test_switches_and_lambdas():
    model = SmallCNN()
    assert SIBNetLoss(model).lambda_cd == DEFAULT_LAMBDAS["gradcam"][0]  # the default maps
    assert SIBNetLoss(model, saliency="deep_taylor").lambda_cd == DEFAULT_LAMBDAS["deep_taylor"][0]
    assert SIBNetLoss(model, saliency="gradcam").lambda_sc == DEFAULT_LAMBDAS["gradcam"][1]
    assert SIBNetLoss(model, saliency="lrp_epsilon", lambda_cd=0.3).lambda_cd == 0.3
    assert SIBNetLoss(model, use_cd=False, use_sc=False).baseline
    # the user's model is not part of the loss's state; the loss balance's normalisers are
    assert set(SIBNetLoss(model).state_dict()) == {"balance.scale", "balance.running", "balance.count"}
    x, y = _batch(b=2, size=16, k=3)
    _, terms = SIBNetLoss(model, saliency="gradcam", use_cd=False)(x, y)
    assert terms["cd"] == 0 and terms["sc"] > 0
    _, terms = SIBNetLoss(model, saliency="gradcam", use_sc=False, embed="image", embed_size=16)(x, y)
    assert terms["sc"] == 0 and terms["cd"] != 0
    _, terms = SIBNetLoss(model, saliency="gradcam", sc_resolution="features")(x, y)
    assert terms["sc"] > 0
    torch.manual_seed(1)
    _, summed = SIBNetLoss(model, saliency="gradcam", use_cd=False)(x, y)
    _, per_pair = SIBNetLoss(model, saliency="gradcam", use_cd=False, sc_scale="pair_mean")(x, y)
    assert 0 < per_pair["sc"] <= 1 < summed["sc"]  # a mean squared difference of [0, 1] maps vs their sum
    with pytest.raises(ConfigError, match="sc_scale"):
        SIBNetLoss(model, sc_scale="mean")
    with pytest.raises(ConfigError, match="embed"):
        SIBNetLoss(model, embed="pixels")
    with pytest.raises(ConfigError, match="radius"):
        SIBNetLoss(model, radius=9)(x, y)
    with pytest.raises(ConfigError, match="gradcam"):
        SIBNetLoss(model, saliency="deep_taylor", sc_resolution="features")
    with pytest.raises(ConfigError, match="unlabeled"):
        SIBNetLoss(model, saliency=None)(x, None)


def test_multiclass_task_uses_weighted_cross_entropy():
    model = SmallCNN(num_classes=2)
    x = torch.randn(4, 1, 16, 16)
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    total, terms = SIBNetLoss(model, saliency="gradcam", task="multiclass", class_weight=[1.0, 3.0])(x, y)
    expected = torch.nn.functional.cross_entropy(terms["logits"], y.argmax(1), weight=torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(terms["wce"], expected)


def _synthetic_tensors(root, split, n):
    from sibnet.data.synthetic import SyntheticChestXray

    data = SyntheticChestXray(root, split, size=48, n=n, seed=0, difficulty=0.0)
    return (torch.stack([data[i]["image"] for i in range(len(data))]),
            torch.stack([data[i]["label"] for i in range(len(data))]))


@pytest.mark.slow
def test_terms_decrease_over_50_steps_on_synthetic_data(tmp_path):
    """L_CD and L_SC fall over 50 steps and the classifier does not collapse to a constant output.

    (Measured with these settings: the baseline reaches a validation AUROC of about 0.67 after the
    same 50 steps and SIBNet-gradcam about 0.50: at this short horizon the saliency terms dominate
    the classification term. The test states what must hold, not that SIBNet wins.)
    """
    from sibnet.evaluation.classification import mean_auroc

    xs, ys = _synthetic_tensors(tmp_path, "train", 240)
    xv, yv = _synthetic_tensors(tmp_path, "val", 160)
    torch.manual_seed(0)
    model = SmallCNN(num_classes=5, width=8)
    loss_fn = SIBNetLoss(model, saliency="gradcam")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.93, 0.999))
    g = torch.Generator().manual_seed(1)
    history = []
    for _ in range(50):
        idx = torch.randint(0, len(xs), (16,), generator=g)
        total, terms = loss_fn(xs[idx], ys[idx])
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append((terms["cd"].item(), terms["sc"].item()))
    history = np.array(history)
    first, last = history[:10].mean(0), history[-10:].mean(0)
    assert last[0] < 0.9 * first[0], f"L_CD did not decrease: {first[0]:.4f} -> {last[0]:.4f}"
    assert last[1] < 0.9 * first[1], f"L_SC did not decrease: {first[1]:.4f} -> {last[1]:.4f}"
    model.eval()
    with torch.no_grad():
        probs = torch.sigmoid(model(xv))
    assert torch.isfinite(probs).all()
    assert probs.std(dim=0).min() > 1e-3, "the classifier collapsed to a constant output"
    assert mean_auroc(probs.numpy(), yv.numpy()) > 0.4


def test_readme_bring_your_own_training_loop_example_runs():
    text = README.read_text()
    match = re.search(r"<!-- byo-loop -->\s*```python\n(.*?)```", text, re.S)
    assert match, "README has no 'bring your own training loop' example marked <!-- byo-loop -->"
    code = match.group(1)
    assert 10 <= len([line for line in code.splitlines() if line.strip()]) <= 25
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 (the README's own example)
    assert "loss_fn" in namespace and namespace["terms"]["sc"] >= 0


def test_embed_size_too_small_for_the_model_is_a_config_error(densenet):
    x, y = _batch(b=2, size=64)
    with pytest.raises(ConfigError, match="embed_size=16"):
        SIBNetLoss(densenet, saliency="gradcam", embed_size=16)(x, y)
