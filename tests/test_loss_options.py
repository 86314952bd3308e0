"""The loss options, defined once (sibnet.loss_options): the table's defaults are configs/default.yaml's,
the configuration and SIBNetLoss check every option with one-line messages naming the key, and one
SIBNetLoss forward checks its maps once."""

from __future__ import annotations

import copy
import dataclasses
import importlib
from pathlib import Path

import pytest
import torch
import yaml
from testnets import SmallCNN

from sibnet import loss_options
from sibnet.config import Config, load_config
from sibnet.errors import ConfigError
from sibnet.loss_options import LossOptions, check_loss_options, choices, option_help
from sibnet.losses import SIBNetLoss
from sibnet.losses.balance import BALANCES, LossBalance
from sibnet.saliency.contrast import CONTRASTS

ROOT = Path(__file__).resolve().parents[1]
FIELDS = [f.name for f in dataclasses.fields(LossOptions)]
# the loss's modules (``sibnet.losses.clusters`` is also the name of a function of the package)
normalise, clusters, coherence, distinctiveness, sibnet_loss = (
    importlib.import_module(f"sibnet.losses.{name}")
    for name in ("normalise", "clusters", "coherence", "distinctiveness", "sibnet_loss"))


def _batch(b=2, size=16, k=3):
    g = torch.Generator().manual_seed(0)
    return torch.rand(b, 1, size, size, generator=g), (torch.rand(b, k, generator=g) > 0.5).float()


def test_default_yaml_loss_section_is_the_option_table():
    documented = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())["loss"]
    assert list(documented) == FIELDS  # every option, in the table's order
    assert documented == dataclasses.asdict(LossOptions())
    assert Config().loss == LossOptions()


def test_every_option_has_a_help_line_and_its_default_passes_its_check():
    for name in FIELDS:
        text = option_help(name)
        assert text.strip() and "\n" not in text, name
    check_loss_options(LossOptions())


def test_choices_are_defined_once():
    assert choices(loss_options.Contrast) == ("auto", *CONTRASTS)  # the saliency package's variants
    assert BALANCES == choices(loss_options.Balance)
    assert coherence.SCALES == choices(loss_options.ScScale)


@pytest.mark.parametrize("name, value, message", [
    ("radius", 9, "radius: expected an integer from 1 to 7 (windows 3x3 to 15x15), got 9"),
    ("radius", True, "radius: expected an integer"),
    ("threshold", "median", "threshold: expected 'otsu', 'mean' or a finite number, got 'median'"),
    ("threshold", float("nan"), "threshold: expected"),
    ("lambda_cd", -1.0, "lambda_cd: must be >= 0 or null, got -1.0"),
    ("lambda_sc", "1", "lambda_sc: expected a number >= 0 or null, got '1'"),
    ("use_cd", 1, "use_cd: expected true/false, got 1"),
    ("embed_size", 4, "embed_size: expected null (the input size) or an integer >= 8, got 4"),
    ("balance", "grad", "balance: expected one of none, first_step, running, gradient, got 'grad'"),
    ("balance_momentum", 1.0, "balance_momentum: must be in [0, 1), got 1.0"),
    ("contrast", "clrp2", "contrast: expected one of auto, none, clrp, sglrp, got 'clrp2'"),
    ("saliency_options", [1], "saliency_options: expected a mapping, got [1]"),
])
def test_sibnet_loss_checks_every_option_when_built(name, value, message):
    with pytest.raises(ConfigError) as err:
        SIBNetLoss(SmallCNN(), saliency="gradcam", **{name: value})  # no forward needed
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_configuration_names_the_key_with_its_section():
    for override, message in [("loss.radius=0", "loss.radius: expected an integer from 1 to 7"),
                              ("loss.threshold=median", "loss.threshold: expected 'otsu', 'mean'"),
                              ("loss.embed_size=4", "loss.embed_size: expected null (the input size) or an integer"),
                              ("loss.saliency=deep_taylor loss.sc_resolution=features",
                               "loss.sc_resolution='features'")]:
        with pytest.raises(ConfigError, match=None) as err:
            load_config(None, override.split())
        assert message in str(err.value)


def test_options_object_and_keywords_build_the_same_loss():
    torch.manual_seed(0)
    model = SmallCNN().train()
    x, y = _batch()
    options = load_config(None, ["loss.saliency=gradcam", "loss.radius=2", "loss.embed_size=null",
                                 "loss.balance=none"]).loss
    a = SIBNetLoss(copy.deepcopy(model), options)(x, y)[1]  # a train-mode forward moves BatchNorm statistics
    b = SIBNetLoss(copy.deepcopy(model), saliency="gradcam", radius=2, embed_size=None, balance="none")(x, y)[1]
    for k in ("total", "wce", "cd", "sc"):
        torch.testing.assert_close(a[k], b[k])
    assert SIBNetLoss(model, options, radius=3).options.radius == 3 and options.radius == 2  # overrides copy
    with pytest.raises(TypeError, match="saliency="):
        SIBNetLoss(model, "gradcam")
    with pytest.raises(TypeError):
        SIBNetLoss(model, no_such_option=1)
    with pytest.raises(ConfigError, match="balance: expected one of none, first_step, running"):
        LossBalance("grad")


def test_one_forward_checks_the_maps_once(monkeypatch):
    calls = []
    original = normalise.check_maps

    def counted(maps, name="maps"):
        calls.append(tuple(maps.shape))
        return original(maps, name)

    for module in (normalise, clusters, coherence, distinctiveness, sibnet_loss):
        monkeypatch.setattr(module, "check_maps", counted)
    torch.manual_seed(0)
    x, y = _batch()
    for extra in ({}, {"cd_space": "maps", "cd_abs": True}, {"normalise": False}):
        calls.clear()
        SIBNetLoss(SmallCNN().train(), saliency="gradcam", embed_size=None, radius=2, **extra)(x, y)
        assert len(calls) == 1, (extra, calls)
    calls.clear()
    normalise.normalise_maps(torch.rand(1, 2, 4, 4))  # the public functions still check for direct callers
    coherence.spatial_coherence(torch.rand(1, 2, 4, 4), radius=1)
    assert len(calls) >= 2


def test_objective_in_words_resolves_defaults_and_lists_other_options():
    """objective_text: the lambdas and contrast the loss resolves (tested against a built loss), the terms
    switched off left out, and every other option that differs from its default named."""
    import torch

    from sibnet.losses.sibnet_loss import objective_text

    o = LossOptions()
    loss = SIBNetLoss(torch.nn.Linear(2, 2), o)
    assert objective_text(o, "multilabel") == (f"weighted BCE + {loss.lambda_cd:g} L_CD + {loss.lambda_sc:g} L_SC "
                                               "(gradcam maps; balance gradient)")
    dt = LossOptions(saliency="deep_taylor", balance="first_step")
    loss = SIBNetLoss(torch.nn.Linear(2, 2), dt)
    assert objective_text(dt, "multilabel") == (f"weighted BCE + {loss.lambda_cd:g} L_CD + {loss.lambda_sc:g} L_SC "
                                                f"(deep_taylor contrast={loss.saliency_options['contrast']} maps; "
                                                "balance first_step)")
    assert objective_text(LossOptions(saliency=None), "multiclass") == "weighted CE alone"
    text = objective_text(LossOptions(use_cd=False, lambda_sc=2.0, radius=3, saliency="gradcam"))
    assert text.startswith("weighted BCE/CE + 2 L_SC (gradcam maps; balance gradient; radius=3")
    assert "L_CD" not in text
