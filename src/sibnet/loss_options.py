"""The options of SIBNet's loss, each defined once: name, type, default, check and one-line help.

:class:`LossOptions` is both the ``loss`` section of the configuration (:class:`sibnet.config.Config`
reads, types and checks it) and what :class:`sibnet.losses.SIBNetLoss` is built from;
``configs/default.yaml`` documents the same defaults (a test holds them equal). Each field carries
its help and its check in ``dataclasses.field(metadata=...)``. A check returns what is wrong with a
value (``None``: nothing); :func:`check_loss_options` and :func:`check_option` raise it as a
one-line :class:`~sibnet.errors.ConfigError` naming the key (``loss.radius`` in the configuration,
``radius`` for the loss and its functional parts).

What the config layer cannot check is checked by ``SIBNetLoss`` when it is built: the saliency
method's name and its options (:mod:`sibnet.saliency`) and whether that method takes ``contrast``.

This module is part of layer 0 (docs/architecture.md): it imports nothing of the package but the errors.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from numbers import Real
from typing import Any, Callable, Literal, Optional, Union

from .errors import ConfigError

Check = Callable[[Any], Optional[str]]

Embed = Literal["maps", "image"]
EmbedGrad = Literal["all", "maps"]
ScResolution = Literal["input", "features"]
ScScale = Literal["sum", "pair_mean"]
Balance = Literal["none", "first_step", "running", "gradient"]
CdSpace = Literal["embedding", "maps"]
Contrast = Literal["auto", "none", "clrp", "sglrp"]

MIN_RADIUS, MAX_RADIUS = 1, 7
MIN_EMBED_SIZE = 8
THRESHOLDS = ("otsu", "mean")


def choices(kind: Any) -> tuple:
    """The values of a ``Literal`` type, e.g. ``choices(Balance) == ("none", "first_step", "running")``."""
    return typing.get_args(kind)


# ------------------------------------------------------------------ checks: value -> problem or None

def one_of(kind: Any) -> Check:
    """A check that the value is one of the ``Literal`` type's values."""
    allowed = choices(kind)

    def check(value: Any) -> str | None:
        if isinstance(value, str) and value in allowed:
            return None
        return f"expected one of {', '.join(allowed)}, got {value!r}"

    return check


def _number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    try:
        return _number(value) and math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"expected true/false, got {value!r}"


def _non_negative_or_null(value: Any) -> str | None:
    if value is None:
        return None
    if not _number(value):
        return f"expected a number >= 0 or null, got {value!r}"
    return f"must be >= 0 or null, got {value}" if value < 0 else None


def _fraction(value: Any) -> str | None:
    """A number in [0, 1)."""
    if not _number(value):
        return f"expected a number in [0, 1), got {value!r}"
    return None if 0 <= value < 1 else f"must be in [0, 1), got {value}"


def _radius(value: Any) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool) and MIN_RADIUS <= value <= MAX_RADIUS:
        return None
    lo, hi = 2 * MIN_RADIUS + 1, 2 * MAX_RADIUS + 1
    return f"expected an integer from {MIN_RADIUS} to {MAX_RADIUS} (windows {lo}x{lo} to {hi}x{hi}), got {value!r}"


def _threshold(value: Any) -> str | None:
    if (isinstance(value, str) and value in THRESHOLDS) or _finite(value):
        return None
    return f"expected 'otsu', 'mean' or a finite number, got {value!r}"


def _embed_size(value: Any) -> str | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= MIN_EMBED_SIZE):
        return None
    return f"expected null (the input size) or an integer >= {MIN_EMBED_SIZE}, got {value!r}"


def _saliency(value: Any) -> str | None:
    if value is None or isinstance(value, str) or callable(value):
        return None
    return f"expected a method name, a callable or null, got {value!r}"


def _mapping_or_null(value: Any) -> str | None:
    return None if value is None or isinstance(value, dict) else f"expected a mapping, got {value!r}"


# ------------------------------------------------------------------ the table

def option(default: Any, help: str, check: Check) -> Any:
    """A field of :class:`LossOptions`: its default, one-line help and check."""
    metadata = {"help": help, "check": check}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class LossOptions:
    """The options of ``SIBNetLoss`` and the ``loss`` section of the configuration (see the module doc).

    The field order is the order of ``loss:`` in ``config.yaml`` files and checkpoints.
    """

    saliency: Optional[str] = option(
        "gradcam", "gradcam | deep_taylor | lrp_epsilon | lrp_alpha_beta | null (the baseline: L_WCE only)",
        _saliency)
    lambda_cd: Optional[float] = option(None, "weight of L_CD; null: the saliency method's default",
                                        _non_negative_or_null)
    lambda_sc: Optional[float] = option(None, "weight of L_SC; null: the saliency method's default",
                                        _non_negative_or_null)
    use_cd: bool = option(True, "the class-distinctiveness term L_CD (eq. 1)", _boolean)
    use_sc: bool = option(True, "the spatial-coherence term L_SC (eq. 2)", _boolean)
    embed: Embed = option("maps", "maps: Z_c embeds the map S_c | image: Z_c embeds x * S_c", one_of(Embed))
    embed_grad: EmbedGrad = option(
        "all", "all: gradients reach the maps and the encoder that embeds them | maps: the maps only",
        one_of(EmbedGrad))
    normalise: bool = option(True, "ReLU, then each map divided by its maximum, before both terms", _boolean)
    radius: int = option(4, "L_SC neighbourhood: the (2r+1) x (2r+1) window", _radius)
    threshold: Union[str, float] = option("otsu", "cluster threshold: otsu | mean | a number", _threshold)
    background_cluster: bool = option(False, "the pixels below the threshold form one more cluster", _boolean)
    embed_size: Optional[int] = option(
        32, "resolution (pixels) at which larger maps are embedded; null: the input size", _embed_size)
    sc_resolution: ScResolution = option(
        "input", "input | features (gradcam only: L_SC on the feature-map-sized maps)", one_of(ScResolution))
    sc_scale: ScScale = option(
        "sum", "sum: eq. 2, the sum per map | pair_mean: per same-cluster pair (outside the paper)", one_of(ScScale))
    saliency_options: dict = option({}, "extra keyword options of the saliency method", _mapping_or_null)
    class_weight: bool = option(
        True, "class weights from the training labels (the builder computes them; SIBNetLoss takes the weights)",
        _boolean)
    balance: Balance = option(
        "gradient", "gradient: each term divided by the norm of its gradient w.r.t. the model's parameters at the "
        "first step | first_step: by its value at the first step | running: by its running mean | none: the raw terms",
        one_of(Balance))
    balance_momentum: float = option(0.99, "running: the running mean's momentum, in [0, 1)", _fraction)
    cd_space: CdSpace = option(
        "embedding", "embedding: L_CD on the maps' embeddings (eq. 1) | maps: on the maps themselves", one_of(CdSpace))
    cd_abs: bool = option(False, "L_CD as the mean |cos| (the published code) instead of the mean cos", _boolean)
    contrast: Contrast = option(
        "auto", "class-contrastive maps: auto (clrp for the relevance methods, none otherwise) | none | clrp | sglrp",
        one_of(Contrast))


FIELDS = {f.name: f for f in dataclasses.fields(LossOptions)}


def option_help(name: str) -> str:
    """The one-line help of the option ``name``."""
    return FIELDS[name].metadata["help"]


def check_option(name: str, value: Any, key: str | None = None) -> None:
    """Raise a one-line ConfigError naming ``key`` (default ``name``) unless ``value`` passes the
    check of the option ``name``; the functional parts of the loss check their arguments with it."""
    problem = FIELDS[name].metadata["check"](value)
    if problem is not None:
        raise ConfigError(f"{key or name}: {problem}")


def check_loss_options(options: LossOptions, prefix: str = "") -> None:
    """Check every option (in field order), then the combinations; errors name ``prefix + name``."""
    for name in FIELDS:
        check_option(name, getattr(options, name), prefix + name)
    if options.sc_resolution == "features" and options.saliency != "gradcam":
        raise ConfigError(f"{prefix}sc_resolution='features' applies to the gradcam saliency method only")
