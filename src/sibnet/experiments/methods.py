"""The methods compared in the paper's tables: name -> model and loss settings.

Every method is the study's classifier (``model.name``, default DenseNet-121; a study may override
it, e.g. ``model.name=resnet18``) or a DenseNet-121 with SE/CBAM attention after each dense block,
trained by :class:`sibnet.training.Trainer`; a method only sets configuration keys (``overrides``,
dotted keys as in ``sibnet train``) and, for the attention variants, the classifier name. Nothing
else differs between methods of one study: data, folds, seeds, optimiser and budget are the study's.

Besides :data:`METHODS`, two families are named by their settings: the lambda grid's
``<method>-lambda-<l1>-<l2>`` (:func:`lambda_method`; ``sibnet-lambda-<l1>-<l2>`` for DeepTaylor) and
the capacity study's width-scaled ``capacity-<base>-<m>`` (:func:`capacity_method`).

``pham`` (Pham et al. 2020) is the DenseNet-121 with weighted BCE, no saliency terms, trained by
the recipe ``train.recipe: pham`` (:mod:`sibnet.training.recipes`): conditional training on the
parent-child label hierarchy for the first half of the study's budget, then all images and the
plain weighted BCE (the whole network) for the second, with U-LSR soft targets in [0.55, 0.85] for
uncertain (-1) training labels. On the five CheXpert competition findings no parent label is
present (the default CheXpert tree's parents, Lung Opacity and Enlarged Cardiomediastinum, are not
among them), so there it is U-LSR plus the two-stage schedule; on NIH (no uncertain labels) it
trains like the baseline. Its stage split is fixed by the study's budget, so a larger budget
cannot continue a finished ``pham`` job (its configuration differs): use another ``--runs``.

``warm-baseline`` and ``warm-sibnet`` re-use a converged model (the paper stresses re-using
pre-trained models): each starts from the evaluated checkpoint of the ``baseline`` job of the same
fold and seed (its weights; a fresh optimizer) and trains for the study's ``--warm-budget`` (default
its ``--budget``), with the weighted BCE alone (the control) or with SIBNet's loss. The baseline job
must be finished first (list it before them in ``--methods``; with ``--jobs`` > 1 a warm job whose
baseline is not finished fails with a message saying so and runs on the next call). Both fine-tune with the
study's learning rate (``optim.lr``, 1e-3 by default, the rate the baseline was trained with);
``warm-baseline-lr<x>`` and ``warm-sibnet-lr<x>`` (:func:`warm_lr_method`) fine-tune with Adam's learning
rate x instead (e.g. ``warm-sibnet-lr0.0001``), in the same job folder as the baseline they start from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import ConfigError
from ..models.classifier import MAX_MULTIPLIER, MIN_MULTIPLIER, width_name


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    # a name of sibnet.models.build_classifier; None: the study's classifier (model.name, default densenet121)
    model: str | None = None
    overrides: dict = field(default_factory=dict)
    unlabeled: bool = False  # SIBNet+: needs the dataset's unlabeled pool
    implemented: bool = True
    warm_start: str | None = None  # start from the evaluated checkpoint of this method's job (same fold, seed)


BASELINE = "baseline"

METHODS: dict[str, Method] = {m.name: m for m in [
    Method(BASELINE, "DenseNet-121, weighted BCE", overrides={"loss.saliency": None}),
    Method("se", "DenseNet-121 + squeeze-and-excitation after each dense block, weighted BCE",
           model="densenet121-se", overrides={"loss.saliency": None}),
    Method("cbam", "DenseNet-121 + CBAM after each dense block, weighted BCE",
           model="densenet121-cbam", overrides={"loss.saliency": None}),
    Method("sibnet", "SIBNet: weighted BCE + L_CD + L_SC on DeepTaylor maps (the configuration's defaults: "
           "contrast and balance as configs/default.yaml)",
           overrides={"loss.saliency": "deep_taylor"}),
    Method("sibnet-plain-dt", "SIBNet on plain (not class-contrastive) DeepTaylor maps",
           overrides={"loss.saliency": "deep_taylor", "loss.contrast": "none"}),
    Method("sibnet-sglrp", "SIBNet on SGLRP-contrastive DeepTaylor maps",
           overrides={"loss.saliency": "deep_taylor", "loss.contrast": "sglrp"}),
    Method("sibnet-raw", "SIBNet (DeepTaylor) with the raw terms (loss.balance none: the paper's equation as written)",
           overrides={"loss.saliency": "deep_taylor", "loss.balance": "none"}),
    Method("sibnet-running", "SIBNet (DeepTaylor) with each term divided by its running mean (loss.balance running)",
           overrides={"loss.saliency": "deep_taylor", "loss.balance": "running"}),
    Method("warm-baseline", "the baseline's evaluated model trained on with the weighted BCE alone for the study's "
           "budget (the control of warm-sibnet)", overrides={"loss.saliency": None}, warm_start=BASELINE),
    Method("warm-sibnet", "the baseline's evaluated model trained on with SIBNet's loss (the configuration's "
           "defaults) for the study's budget", overrides={"loss.saliency": "deep_taylor"}, warm_start=BASELINE),
    Method("warm-sibnet-gradient", "warm-sibnet with the gradient-norm balance (loss.balance gradient): the SIBNet "
           "terms pull on the converged weights as hard as the weighted BCE/CE (times lambda)",
           overrides={"loss.saliency": "deep_taylor", "loss.balance": "gradient"}, warm_start=BASELINE),
    Method("authors", "the published SIBNet training code's objective: GradCAM with constant channel weights, "
           "L_CD as |cos| of the maps themselves, every term divided by its first value, lambdas 1",
           overrides={"loss.saliency": "gradcam", "loss.saliency_options": {"weight_grad": False},
                      "loss.cd_space": "maps", "loss.cd_abs": True, "loss.balance": "first_step",
                      "loss.lambda_cd": 1.0, "loss.lambda_sc": 1.0}),
    Method("sibnet-gradcam", "SIBNet with GradCAM maps", overrides={"loss.saliency": "gradcam"}),
    Method("sibnet-gradient", "SIBNet (DeepTaylor) with each term divided by the norm of its gradient at the first "
           "step (loss.balance gradient)", overrides={"loss.saliency": "deep_taylor", "loss.balance": "gradient"}),
    Method("sibnet-first-step", "SIBNet (DeepTaylor) with each term divided by its own value at the first step "
           "(loss.balance first_step, the default before gradient)",
           overrides={"loss.saliency": "deep_taylor", "loss.balance": "first_step"}),
    Method("sibnet-gradcam-gradient", "SIBNet with GradCAM maps and the gradient-norm balance (loss.balance gradient)",
           overrides={"loss.saliency": "gradcam", "loss.balance": "gradient"}),
    Method("sibnet-gradcam-raw", "SIBNet with GradCAM maps and the raw terms (loss.balance none)",
           overrides={"loss.saliency": "gradcam", "loss.balance": "none"}),
    # ablations of the default objective (GradCAM maps, gradient-norm balance): one term off, or SIBNet+
    Method("no-cd-gradcam-gradient", "SIBNet (GradCAM, gradient-norm balance) without L_CD",
           overrides={"loss.saliency": "gradcam", "loss.balance": "gradient", "loss.use_cd": False}),
    Method("no-sc-gradcam-gradient", "SIBNet (GradCAM, gradient-norm balance) without L_SC",
           overrides={"loss.saliency": "gradcam", "loss.balance": "gradient", "loss.use_sc": False}),
    Method("sibnet-plus-gradcam-gradient", "SIBNet+ (GradCAM, gradient-norm balance) with the dataset's "
           "unlabeled pool", overrides={"loss.saliency": "gradcam", "loss.balance": "gradient"}, unlabeled=True),
    Method("sibnet-lrp", "SIBNet with LRP-epsilon maps", overrides={"loss.saliency": "lrp_epsilon"}),
    Method("no-cd", "SIBNet (DeepTaylor) without L_CD",
           overrides={"loss.saliency": "deep_taylor", "loss.use_cd": False}),
    Method("no-sc", "SIBNet (DeepTaylor) without L_SC",
           overrides={"loss.saliency": "deep_taylor", "loss.use_sc": False}),
    Method("image-embed", "SIBNet (DeepTaylor), L_CD on embeddings of image x map instead of maps",
           overrides={"loss.saliency": "deep_taylor", "loss.embed": "image"}),
    Method("sibnet-pair-mean", "SIBNet (DeepTaylor) with L_SC as the mean per same-cluster pair "
           "(an option outside the paper; the paper's sum per map dominates the loss)",
           overrides={"loss.saliency": "deep_taylor", "loss.sc_scale": "pair_mean"}),
    Method("sibnet-plus", "SIBNet+ (DeepTaylor) with the dataset's unlabeled pool",
           overrides={"loss.saliency": "deep_taylor"}, unlabeled=True),
    Method("pham", "Pham et al. 2020: hierarchy-conditional training, fine-tuning, U-LSR",
           overrides={"loss.saliency": None, "train.recipe": "pham"}),
]}


LAMBDA_MARK = "-lambda-"
LAMBDA_BASE = "sibnet"  # the grid's default base method: SIBNet with DeepTaylor maps


def _grid_base(m: Method) -> bool:
    """Whether ``m`` can be a lambda grid's base: a SIBNet method trained from scratch on the labeled images."""
    return m.overrides.get("loss.saliency") is not None and not m.warm_start and not m.unlabeled


def lambda_base(base: Method | str, name: str | None = None) -> Method:
    """The base method of a lambda grid (``name``: the grid point asked for, for the error message)."""
    if isinstance(base, Method):
        return base
    m = METHODS.get(base)
    if m is None or not _grid_base(m):
        choices = [k for k, v in METHODS.items() if _grid_base(v)]
        raise ConfigError(f"--methods: {name or base!r}: the lambda grid's base method must be a SIBNet method "
                          f"trained from scratch; {base!r} is not one (choose from {', '.join(choices)})")
    return m


def lambda_method(lambda_cd: float, lambda_sc: float, base: Method | str = LAMBDA_BASE) -> Method:
    """``base`` (default ``sibnet``: DeepTaylor) with the given weights, named ``<base>-lambda-<l1>-<l2>``
    (lambda-grid), e.g. ``sibnet-lambda-0.5-1`` or ``sibnet-gradcam-gradient-lambda-0.5-1``."""
    name = f"{base if isinstance(base, str) else base.name}{LAMBDA_MARK}{float(lambda_cd):g}-{float(lambda_sc):g}"
    b = lambda_base(base, name)
    return Method(name, f"{b.description}; lambda_cd={float(lambda_cd):g}, lambda_sc={float(lambda_sc):g}",
                  model=b.model, overrides={**b.overrides, "loss.lambda_cd": float(lambda_cd),
                                            "loss.lambda_sc": float(lambda_sc)})


def _parse_lambda_name(name: str) -> Method | None:
    base, _, text = name.rpartition(LAMBDA_MARK)
    parts = text.split("-")
    try:
        l1, l2 = (float(p) for p in parts)
    except ValueError:
        return None
    if l1 < 0 or l2 < 0:
        return None
    m = lambda_method(l1, l2, base)
    return m if m.name == name else None


CAPACITY_PREFIX = "capacity-"
SCALABLE_MODELS = ("densenet121", "densenet121-se", "densenet121-cbam")  # base models with a width rule


def _capacity_name_error(name: str, why: str) -> ConfigError:
    return ConfigError(f"--methods: {name!r}: {why}; expected {CAPACITY_PREFIX}<method>-<m> with m a number in "
                       f"[{MIN_MULTIPLIER:g}, {MAX_MULTIPLIER:g}] written as Python's %g (e.g. capacity-sibnet-0.5)")


def capacity_method(base: Method | str, multiplier: float) -> Method:
    """``base`` (a method on DenseNet-121, plain or with SE/CBAM) with a DenseNet-121 of about m x P parameters
    (the capacity study, :mod:`sibnet.experiments.capacity`), named ``capacity-<base>-<m>``."""
    base = get_method(base) if isinstance(base, str) else base
    m = float(multiplier)
    name = f"{CAPACITY_PREFIX}{base.name}-{m:g}"
    if not (math.isfinite(m) and MIN_MULTIPLIER <= m <= MAX_MULTIPLIER):
        raise _capacity_name_error(name, f"m = {m:g} is outside [{MIN_MULTIPLIER:g}, {MAX_MULTIPLIER:g}]")
    model = base.model or "densenet121"  # capacity scales the DenseNet-121 (a study's model.name does not apply)
    if base.name.startswith(CAPACITY_PREFIX) or model not in SCALABLE_MODELS:
        raise _capacity_name_error(name, f"the base method {base.name!r} does not train a DenseNet-121 (plain, SE "
                                         f"or CBAM) (model {model}); only those can be width-scaled")
    return Method(name, f"{base.description}; DenseNet-121 width-scaled to about {m:g} x its parameters",
                  model=width_name(m, model), overrides=dict(base.overrides), unlabeled=base.unlabeled)


def capacity_method_from_name(name: str) -> Method:
    """The method of ``capacity-<base>-<m>`` (ConfigError for an unknown base, a bad or non-%g m)."""
    if not name.startswith(CAPACITY_PREFIX):
        raise _capacity_name_error(name, f"it does not start with {CAPACITY_PREFIX!r}")
    base, _, text = name[len(CAPACITY_PREFIX):].rpartition("-")
    if base.endswith("-"):  # a negative number: capacity-baseline--1
        base, text = base[:-1], "-" + text
    if not base or not text:
        raise _capacity_name_error(name, "no base method or no multiplier")
    try:
        m = float(text)
    except ValueError:
        raise _capacity_name_error(name, f"{text!r} is not a number") from None
    if not math.isfinite(m) or f"{m:g}" != text:
        raise _capacity_name_error(name, f"{text!r} is not a number written as %g (that would be {m:g})")
    try:
        base_method = get_method(base)
    except ConfigError as exc:
        raise _capacity_name_error(name, f"unknown base method {base!r} ({exc})") from None
    return capacity_method(base_method, m)


def capacity_methods(bases: list[Method], capacities) -> list[Method]:
    """One capacity method per (base, m), base-major in the given orders."""
    return [capacity_method(b, m) for b in bases for m in capacities]


WARM_LR_MARK = "-lr"


def warm_lr_method(base: Method | str, lr: float) -> Method:
    """The warm-started method ``base`` fine-tuning with Adam's learning rate ``lr`` (``optim.lr``), named
    ``<base>-lr<lr>`` with lr written as Python's %g (e.g. ``warm-sibnet-lr0.0001``)."""
    base = get_method(base) if isinstance(base, str) else base
    lr = float(lr)
    name = f"{base.name}{WARM_LR_MARK}{lr:g}"
    if base.warm_start is None:
        raise ConfigError(f"--methods: {name!r}: {base.name!r} is not a warm-started method; a learning rate of "
                          f"its own is for {', '.join(m.name for m in METHODS.values() if m.warm_start)}")
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"--methods: {name!r}: the learning rate must be a number > 0")
    return Method(name, f"{base.description}; Adam learning rate {lr:g}", model=base.model,
                  overrides={**base.overrides, "optim.lr": lr}, unlabeled=base.unlabeled,
                  warm_start=base.warm_start)


def _parse_warm_lr_name(name: str) -> Method:
    base, _, text = name.rpartition(WARM_LR_MARK)
    why = (f"--methods: {name!r} is not <warm method>{WARM_LR_MARK}<learning rate> with the rate a number > 0 "
           f"written as Python's %g (e.g. warm-sibnet-lr0.0001)")
    try:
        lr = float(text)
    except ValueError:
        raise ConfigError(why) from None
    if base not in METHODS or not math.isfinite(lr) or f"{lr:g}" != text:
        raise ConfigError(why)
    return warm_lr_method(METHODS[base], lr)


def _is_warm_lr_name(name: str) -> bool:
    base = name.rpartition(WARM_LR_MARK)[0]
    return name not in METHODS and base in METHODS and METHODS[base].warm_start is not None


def get_method(name: str) -> Method:
    """The method called ``name``: one of :data:`METHODS`, a lambda-grid point, a capacity method or a
    warm-started method with a learning rate of its own."""
    if _is_warm_lr_name(name):
        return _parse_warm_lr_name(name)
    if name.startswith(CAPACITY_PREFIX):
        return capacity_method_from_name(name)
    if LAMBDA_MARK in name and name not in METHODS:
        m = _parse_lambda_name(name)
        if m is None:
            raise ConfigError(f"--methods: {name!r} is not <method>{LAMBDA_MARK}<lambda_cd>-<lambda_sc> with "
                              "numbers >= 0 written as Python's %g (e.g. sibnet-lambda-0.5-1)")
        return m
    if name not in METHODS:
        raise ConfigError(f"--methods: unknown method {name!r}; choose from {', '.join(METHODS)}")
    m = METHODS[name]
    if not m.implemented:
        raise ConfigError(f"--methods: {name!r} ({m.description}) is not implemented in this version")
    return m


def parse_methods(text: str | list[str]) -> list[Method]:
    """Comma-separated method names (order kept, duplicates dropped); each checked."""
    names = text.split(",") if isinstance(text, str) else list(text)
    out: list[Method] = []
    for name in (n.strip() for n in names):
        if not name:
            continue
        m = get_method(name)
        if m not in out:
            out.append(m)
    if not out:
        raise ConfigError("--methods: no method given")
    return out


def not_implemented() -> list[Method]:
    return [m for m in METHODS.values() if not m.implemented]
