"""Loss balance (first_step, running, gradient, none): values by hand, state in checkpoints, exact resume,
SIBNet+ batches, zero terms, and the collapse figures the loop logs."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from testnets import SmallCNN

from sibnet.errors import ConfigError
from sibnet.losses import SIBNetLoss
from sibnet.losses.balance import LossBalance
from sibnet.training import load_checkpoint
from sibnet.training.build import sibnet_loss_factory

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_train_loop as t  # noqa: E402


def _batch(seed=0, k=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(4, 1, 16, 16, generator=g)
    y = (torch.rand(4, k, generator=g) > 0.5).float()
    return x, y


def _loss(model, balance, **kw):
    return SIBNetLoss(model, saliency="gradcam", balance=balance, embed_size=None, radius=2, **kw)


def test_first_step_divides_each_term_by_its_first_value():
    torch.manual_seed(0)
    model = SmallCNN().train()
    loss_fn = _loss(model, "first_step", lambda_cd=0.7, lambda_sc=0.3)
    x, y = _batch()
    total, terms = loss_fn(x, y)
    # every term starts at 1, then lambda weighs it
    assert terms["wce_w"].item() == pytest.approx(1.0)
    assert terms["cd_w"].item() == pytest.approx(0.7)
    assert terms["sc_w"].item() == pytest.approx(0.3)
    assert total.item() == pytest.approx(2.0)
    first = loss_fn.balance.normalisers()
    assert first == pytest.approx({k: float(terms[k]) for k in ("wce", "cd", "sc")})
    # later batches: the same normalisers
    x2, y2 = _batch(1)
    total2, terms2 = loss_fn(x2, y2)
    assert loss_fn.balance.normalisers() == first
    expected = terms2["wce"] / first["wce"] + 0.7 * terms2["cd"] / first["cd"] + 0.3 * terms2["sc"] / first["sc"]
    assert total2.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("saliency", ["gradcam", "deep_taylor"])
def test_gradient_balance_divides_each_term_by_its_first_gradient_norm(saliency):
    """gradient: the normalisers are the norms of each term's gradient on the parameters at the first step,
    computed without touching .grad; after the division each term's gradient has norm lambda; fixed later."""
    import copy

    torch.manual_seed(0)
    model = SmallCNN().train()
    pristine = copy.deepcopy(model)  # each check below starts from it: one forward each (BatchNorm statistics)
    loss_fn = SIBNetLoss(model, saliency=saliency, balance="gradient", embed_size=None, radius=2, lambda_cd=0.7,
                         lambda_sc=0.3)
    x, y = _batch()
    total, terms = loss_fn(x, y)
    assert all(p.grad is None for p in model.parameters())  # the norms left no trace in .grad

    def grad_norm_of(name, balance_state=None):
        net = copy.deepcopy(pristine)
        fn = SIBNetLoss(net, saliency=saliency, balance="gradient", embed_size=None, radius=2, lambda_cd=0.7,
                        lambda_sc=0.3)
        if balance_state is not None:
            fn.load_state_dict(balance_state)
        _single_term(fn, x, y, name, weighted=balance_state is not None).backward()
        return torch.sqrt(sum(p.grad.double().pow(2).sum() for p in net.parameters() if p.grad is not None)).item()

    norms = {name: grad_norm_of(name) for name in ("wce", "cd", "sc")}  # an independent backward per term
    assert loss_fn.balance.normalisers() == pytest.approx(norms, rel=1e-4)
    assert terms["wce_w"].item() == pytest.approx(terms["wce"].item() / norms["wce"], rel=1e-4)
    # each weighted term's gradient norm is its lambda at the first step
    for name, lam in (("wce", 1.0), ("cd", 0.7), ("sc", 0.3)):
        assert grad_norm_of(name, loss_fn.state_dict()) == pytest.approx(lam, rel=1e-4), name
    first = loss_fn.balance.normalisers()
    loss_fn(*_batch(1))
    assert loss_fn.balance.normalisers() == first


def _single_term(loss_fn, x, y, name, weighted=False):
    """One term of the loss (raw, or as the total weighs it) with its graph to the parameters."""
    o = loss_fn.options
    from sibnet.losses import spatial_coherence
    from sibnet.losses.normalise import normalise_maps

    logits, maps = loss_fn.maps_and_logits(x)
    maps = normalise_maps(maps)

    if name == "wce":
        value = loss_fn.classification_loss(logits, y)
    elif name == "sc":
        value = spatial_coherence(maps, radius=o.radius, threshold=o.threshold,
                                  background_cluster=o.background_cluster, scale=o.sc_scale)
    else:
        value = loss_fn.distinctiveness(maps, x)
    if weighted:
        lam = {"wce": 1.0, "cd": loss_fn.lambda_cd, "sc": loss_fn.lambda_sc}[name]
        value = value * (lam / loss_fn.balance.divisor(name))
    return value


def test_running_mean_is_bias_corrected_by_hand():
    bal = LossBalance("running", momentum=0.9)
    values = [2.0, 4.0, 1.0, 3.0]
    m = 0.0
    for n, v in enumerate(values, 1):
        bal.update({"wce": torch.tensor(v), "sc": torch.tensor(-v)})  # magnitudes
        m = 0.9 * m + 0.1 * v
        assert bal.divisor("wce") == pytest.approx(m / (1 - 0.9 ** n))
        assert bal.divisor("sc") == pytest.approx(m / (1 - 0.9 ** n))
    assert bal.divisor("cd") == 1.0  # never observed


def test_none_keeps_the_raw_sum():
    torch.manual_seed(0)
    model = SmallCNN().train()
    loss_fn = _loss(model, "none", lambda_cd=0.7, lambda_sc=0.3)
    total, terms = loss_fn(*_batch())
    assert total.item() == pytest.approx((terms["wce"] + 0.7 * terms["cd"] + 0.3 * terms["sc"]).item(), rel=1e-6)


def test_no_update_in_eval_mode_or_without_grad_or_on_unlabeled_batches():
    torch.manual_seed(0)
    model = SmallCNN().eval()
    loss_fn = _loss(model, "first_step")
    x, y = _batch()
    loss_fn(x, y)
    assert all(math.isnan(v) for v in loss_fn.balance.scale.tolist())
    model.train()
    with torch.no_grad():
        loss_fn(x, y)
    assert all(math.isnan(v) for v in loss_fn.balance.scale.tolist())
    loss_fn(x, None)  # SIBNet+ batch: uses the normalisers, does not set them
    assert all(math.isnan(v) for v in loss_fn.balance.scale.tolist())
    _, terms = loss_fn(x, y)
    norms = loss_fn.balance.normalisers()
    _, u_terms = loss_fn(x, None)
    assert u_terms["cd_w"].item() == pytest.approx(loss_fn.lambda_cd * u_terms["cd"].item() / norms["cd"], rel=1e-5)
    assert u_terms["sc_w"].item() == pytest.approx(loss_fn.lambda_sc * u_terms["sc"].item() / norms["sc"], rel=1e-5)
    assert u_terms["wce_w"].item() == 0.0


def test_a_zero_term_warns_once_and_is_never_divided_by_zero():
    torch.manual_seed(0)
    model = SmallCNN(num_classes=1).train()  # one class: L_CD has no pair, it is 0
    loss_fn = _loss(model, "first_step")
    x, y = _batch(k=1)
    with pytest.warns(RuntimeWarning, match="term cd is 0"):
        total, terms = loss_fn(x, y)
    assert terms["cd"].item() == 0.0 and math.isfinite(total.item())
    assert loss_fn.balance.divisor("cd") == 1.0
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss_fn(x, y)  # no second warning


def test_bad_balance_settings_are_config_errors():
    model = SmallCNN()
    with pytest.raises(ConfigError, match="balance: expected one of none, first_step, running"):
        SIBNetLoss(model, balance="grad")
    with pytest.raises(ConfigError, match="balance_momentum"):
        SIBNetLoss(model, balance="running", balance_momentum=1.0)
    with pytest.raises(ConfigError, match="cd_space"):
        SIBNetLoss(model, cd_space="pixels")
    from sibnet.config import load_config

    with pytest.raises(ConfigError, match="loss.balance"):
        load_config(None, ["loss.balance=gradnorm"])


def test_authors_cd_is_abs_cosine_of_the_raw_maps():
    torch.manual_seed(0)
    model = SmallCNN().train()
    x, y = _batch()
    loss_fn = _loss(model, "none", cd_space="maps", cd_abs=True)
    _, terms = loss_fn(x, y)
    from sibnet.losses.normalise import normalise_maps

    maps = normalise_maps(loss_fn.method(model, x))
    f = torch.nn.functional.normalize(maps.flatten(2), dim=2, eps=1e-8)
    cos = (f @ f.transpose(1, 2))[:, [0, 0, 1], [1, 2, 2]]
    assert terms["cd"].item() == pytest.approx(cos.abs().mean().item(), rel=1e-5)
    assert terms["map_cos"].item() == pytest.approx(cos.mean().item(), rel=1e-5)


def _sibnet_factory(net, cfg, task, class_weight):
    return sibnet_loss_factory(net, cfg, task, class_weight)


@pytest.mark.parametrize("balance", ["first_step", "running", "gradient"])
def test_normalisers_are_saved_and_a_resumed_run_equals_an_uninterrupted_one(tmp_path, balance):
    common = ["loss.saliency=gradcam", "loss.radius=2", "loss.embed_size=null", f"loss.balance={balance}",
              "loss.balance_momentum=0.5", "train.epochs=2"]
    whole = t.tiny_config(tmp_path / "whole", *common)
    t.tiny_trainer(whole, loss_factory=_sibnet_factory).fit()
    half = t.tiny_config(tmp_path / "half", *common[:-1], "train.epochs=1")
    t.tiny_trainer(half, loss_factory=_sibnet_factory).fit()
    mid = load_checkpoint(tmp_path / "half" / "last.pt")["loss"]
    assert torch.isfinite(mid["balance.scale"]).all()
    resumed = t.tiny_config(tmp_path / "half", *common)
    t.tiny_trainer(resumed, loss_factory=_sibnet_factory).fit(resume=tmp_path / "half")
    a, b = load_checkpoint(tmp_path / "whole" / "last.pt"), load_checkpoint(tmp_path / "half" / "last.pt")
    t.assert_same_weights(a["model"], b["model"])
    assert torch.equal(a["loss"]["balance.scale"], b["loss"]["balance.scale"])
    if balance != "running":  # fixed after the first step
        assert torch.equal(a["loss"]["balance.scale"], mid["balance.scale"])
    else:
        assert not torch.equal(a["loss"]["balance.scale"], mid["balance.scale"])
    # the epoch log has every term raw and weighted, and the class maps' figures
    row = a["state"]["history"][-1]
    for key in ("train_wce", "train_cd", "train_sc", "train_wce_w", "train_cd_w", "train_sc_w", "train_map_cos",
                "val_map_cos", "val_emb_cos", "val_flat_maps"):
        assert key in row and math.isfinite(row[key]), key
    header = (tmp_path / "whole" / "metrics.csv").read_text().splitlines()[0]
    assert "train_sc_w" in header and "val_map_cos" in header


def test_collapse_warning_names_identical_and_flat_maps():
    from sibnet.training.collapse import collapse_warning

    assert collapse_warning({"map_cos": 0.5, "flat_maps": 0.0}, 3) is None
    assert "identical" in collapse_warning({"map_cos": 0.995, "flat_maps": 0.0}, 3)
    assert "flat" in collapse_warning({"map_cos": 0.2, "flat_maps": 0.9}, 3)


def test_collapse_warning_advises_only_what_the_loss_does_not_do():
    from sibnet.training.collapse import collapse_warning

    net = SmallCNN()
    identical = {"map_cos": 0.995, "flat_maps": 0.0}
    gradcam = collapse_warning(identical, 4, SIBNetLoss(net, saliency="gradcam", balance="first_step",
                                                        task="multilabel"))
    assert "loss.saliency=deep_taylor loss.contrast=clrp" in gradcam and "loss.balance=gradient" in gradcam
    default = collapse_warning(identical, 4, SIBNetLoss(net, saliency="deep_taylor", task="multilabel"))
    assert "contrast" not in default and "balance" not in default and "model.pretrained=RUN/best.pt" in default
    raw = collapse_warning(identical, 4, SIBNetLoss(net, saliency="deep_taylor", balance="none", contrast="none",
                                                    task="multilabel"))
    assert "loss.balance=gradient" in raw and "loss.contrast=clrp" in raw
    balanced = collapse_warning(identical, 4, SIBNetLoss(net, saliency="gradcam", balance="gradient",
                                                         task="multilabel"))
    assert "balance" not in balanced
    flat = collapse_warning({"map_cos": 0.2, "flat_maps": 0.9}, 4, SIBNetLoss(net, saliency="deep_taylor",
                                                                             task="multilabel"))
    assert "a lower loss.lambda_sc" in flat


def test_collapse_metrics_by_hand():
    from sibnet.training.collapse import FLAT_SD, collapse_metrics

    torch.manual_seed(0)
    model = SmallCNN().eval()
    ds = t.TinySet(8, 0, noise=False)
    loss_fn = _loss(model, "none")
    m = collapse_metrics(model, loss_fn, ds, "cpu", n_images=8)
    x = torch.stack([ds[i]["image"] for i in range(8)])
    from sibnet.losses.normalise import normalise_maps

    maps = normalise_maps(loss_fn.method(model, x))
    f = torch.nn.functional.normalize(maps.flatten(2), dim=2, eps=1e-8)
    cos = (f @ f.transpose(1, 2))[:, [0, 0, 1], [1, 2, 2]].mean()
    assert m["map_cos"] == pytest.approx(cos.item(), rel=1e-5)
    assert m["flat_maps"] == pytest.approx((maps.flatten(2).std(2) < FLAT_SD).float().mean().item())
    assert model.training is False
