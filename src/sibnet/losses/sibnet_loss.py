"""``SIBNetLoss``: weighted cross-entropy + lambda1 L_CD + lambda2 L_SC for any classifier (eq. 3).

One forward pass gives the logits and, through the saliency method, all K class maps
(differentiable w.r.t. the parameters). The maps are checked once, normalised (docs/design.md,
Losses: 'Normalisation'), embedded by the model's own encoder with BatchNorm in eval semantics and
without updating any statistics ('L_CD'), and clustered on their detached values for L_SC
('L_SC'). An unlabeled batch (``y=None``) contributes only lambda1 L_CD + lambda2 L_SC (SIBNet+).
The options are :class:`sibnet.loss_options.LossOptions`, each checked when the loss is built.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .. import saliency as saliency_pkg
from ..errors import ConfigError
from ..loss_options import LossOptions, check_loss_options
from ..models.embedding import frozen_parameters, penultimate
from ..saliency.resize import resize_linear
from ..saliency.state import eval_norm
from .balance import LossBalance, gradient_norms
from .classification import TASKS, weighted_bce, weighted_ce
from .coherence import spatial_coherence
from .distinctiveness import class_distinctiveness, embed_maps, pairwise_cosine
from .normalise import check_maps, normalise_maps

#: (lambda1, lambda2) used when the caller gives none (docs/design.md, Losses: 'λ defaults')
DEFAULT_LAMBDAS = {
    "deep_taylor": (1.2, 0.9),
    "gradcam": (1.4, 1.0),
    "lrp_epsilon": (1.1, 0.8),
    "lrp_alpha_beta": (1.1, 0.8),
}
FALLBACK_LAMBDAS = (1.0, 1.0)
#: what ``contrast="auto"`` means for a method that takes the option (the relevance methods)
DEFAULT_CONTRAST = "clrp"


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def resolved_lambdas(o: LossOptions) -> tuple[float, float]:
    """``(lambda_cd, lambda_sc)`` of the options, the saliency method's defaults where they are None."""
    default = DEFAULT_LAMBDAS.get(o.saliency, FALLBACK_LAMBDAS) if isinstance(o.saliency, str) else FALLBACK_LAMBDAS
    return (float(default[0] if o.lambda_cd is None else o.lambda_cd),
            float(default[1] if o.lambda_sc is None else o.lambda_sc))


#: the options objective_text states in words; any other option that differs from its default is listed
_NAMED = ("saliency", "use_cd", "use_sc", "lambda_cd", "lambda_sc", "contrast", "saliency_options", "balance")


def objective_text(o: LossOptions, task: str | None = None) -> str:
    """The training objective in words, e.g. ``weighted BCE + 1.2 L_CD + 0.9 L_SC (deep_taylor contrast=clrp
    maps; balance gradient)``; options other than these that differ from their defaults follow. ``task``
    None (not known): ``weighted BCE/CE``."""
    wce = {"multiclass": "weighted CE", "multilabel": "weighted BCE"}.get(task or "", "weighted BCE/CE")
    if o.saliency is None or not (o.use_cd or o.use_sc):
        return f"{wce} alone"
    lam_cd, lam_sc = resolved_lambdas(o)
    terms = [wce] + ([f"{lam_cd:g} L_CD"] if o.use_cd else []) + ([f"{lam_sc:g} L_SC"] if o.use_sc else [])
    try:
        maps = saliency_pkg.describe(o.saliency, with_contrast(o.saliency, dict(o.saliency_options or {}),
                                                                o.contrast))
    except ConfigError:
        maps = saliency_pkg.describe(o.saliency, dict(o.saliency_options or {}))
    default = LossOptions()
    other = [f"{f.name}={getattr(o, f.name)}" for f in dataclasses.fields(o)
             if f.name not in _NAMED and getattr(o, f.name) != getattr(default, f.name)]
    return f"{' + '.join(terms)} ({maps} maps; balance {o.balance}" + (f"; {', '.join(other)}" if other else "") + ")"


def with_contrast(method, options: dict, contrast: str) -> dict:
    """The saliency options with ``contrast`` (a checked option value) resolved for ``method`` (see SIBNetLoss)."""
    if "contrast" in options:
        return options
    takes = saliency_pkg.takes_option(method, "contrast")
    if contrast == "auto":
        contrast = DEFAULT_CONTRAST if takes else "none"
    if contrast == "none":
        return options
    if not takes:
        raise ConfigError(f"contrast={contrast!r}: the saliency method {getattr(method, '__name__', method)} has no "
                          "class-contrastive variant (deep_taylor, lrp_epsilon and lrp_alpha_beta have)")
    return {**options, "contrast": contrast}


class SIBNetLoss(nn.Module):
    """SIBNet's total loss for ``model``.

    Args:
        model: any classifier ``x (B,C,*spatial) -> logits (B,K)`` (a DistributedDataParallel wrapper
            is accepted: the saliency forward goes through it, the embedding pass uses its module).
        options: the loss options, :class:`sibnet.loss_options.LossOptions` (default: its defaults),
            e.g. the configuration's ``cfg.loss``; its ``class_weight`` switch is the builder's (the
            weights themselves are the ``class_weight`` argument here).
        task: "multilabel" (weighted BCE, ``class_weight`` = pos_weight) or "multiclass" (weighted CE).
        class_weight: (K,) class weights of the classification term (None: all 1).
        **overrides: options by name, replacing those of ``options``, e.g. ``saliency="gradcam"``.

    Every option is checked here (:func:`sibnet.loss_options.check_loss_options`, then the saliency
    method's name and options); a bad one is a one-line ConfigError naming it. The options:

    - saliency: a method name of :mod:`sibnet.saliency`, a callable with the same signature, or
      ``None`` for the plain baseline (weighted cross-entropy only, no maps computed).
    - lambda_cd, lambda_sc: weights of L_CD and L_SC; ``None`` takes the method's default
      (``DEFAULT_LAMBDAS``).
    - use_cd, use_sc: the ablation switches.
    - embed: "maps" (Z_c embeds the map S_c) or "image" (Z_c embeds x * S_c).
    - embed_grad: "all" (gradients reach the maps and the encoder used to embed them) or "maps".
    - normalise: ReLU + divide by the per-map maximum before both terms.
    - radius, threshold, background_cluster: the L_SC neighbourhood and clustering.
    - embed_size: resolution (pixels) at which maps are embedded when the input is larger (small by
      default: the embedding pass of the B·K maps dominates the step's cost; see docs/benchmarks.md);
      ``None`` embeds at the input size.
    - sc_resolution: "input" or "features" (Grad-CAM only: L_SC on the feature-map-sized maps).
    - sc_scale: "sum" (eq. 2: the sum per map, docs/design.md, Losses: 'L_SC') or "pair_mean" (that
      sum divided by the map's number of same-cluster pairs; an option outside the paper, see
      :func:`sibnet.losses.spatial_coherence`).
    - saliency_options: extra keyword options for the saliency method.
    - balance: "gradient" (the default: each term divided by the norm of its gradient w.r.t. the
      model's parameters at the first step), "first_step" (each term divided by its own value at the
      first training step, as the published SIBNet training code does), "running" (by a
      bias-corrected running mean of its value, ``balance_momentum``) or "none" (raw terms); see
      :mod:`sibnet.losses.balance`. The lambdas weigh the balanced terms.
    - cd_space: "embedding" (L_CD on the model's embeddings of the maps, eq. 1) or "maps" (the
      cosine of the flattened maps themselves, the published code's default).
    - cd_abs: L_CD as the mean of |cos| instead of cos (the published code's choice).
    - contrast: class-contrastive relevance (:mod:`sibnet.saliency.contrast`) for the methods that
      take it (deep_taylor, lrp_epsilon, lrp_alpha_beta): "none", "clrp", "sglrp", or "auto"
      (``DEFAULT_CONTRAST`` for those methods, "none" for the others, e.g. gradcam). A
      ``contrast`` in ``saliency_options`` wins.

    ``loss_fn(x, y) -> (total, terms)`` with ``terms`` holding detached scalars "wce", "cd", "sc"
    (raw), "wce_w", "cd_w", "sc_w" (each term's share of the total: lambda x term / normaliser),
    "total", "map_cos" (the mean pairwise cosine of the batch's normalised class maps) and the
    detached "logits".
    """

    # set in __init__: the model (held without registering it as a submodule) and the class-weight
    # buffer (register_buffer) or None
    model: nn.Module
    class_weight: torch.Tensor | None

    def __init__(self, model: nn.Module, options: LossOptions | None = None, *, task: str = "multilabel",
                 class_weight=None, **overrides):
        super().__init__()
        if options is not None and not isinstance(options, LossOptions):
            raise TypeError(f"SIBNetLoss: options must be a LossOptions, got {type(options).__name__} "
                            "(pass the saliency method as saliency=...)")
        o = dataclasses.replace(options if options is not None else LossOptions(), **overrides)
        check_loss_options(o)
        if task not in TASKS:
            raise ConfigError(f"task: expected 'multilabel' or 'multiclass', got {task!r}")
        # not registered as a submodule: the loss holds no parameters of its own, and its
        # state_dict/train()/to() never reach into the user's model
        object.__setattr__(self, "model", model)
        self.options, self.task = o, task
        self.method = None if o.saliency is None or not (o.use_cd or o.use_sc) else saliency_pkg.get(o.saliency)
        self.lambda_cd, self.lambda_sc = resolved_lambdas(o)
        self.embed_size = o.embed_size
        self.balance = LossBalance(o.balance, o.balance_momentum)
        self.saliency_options = dict(o.saliency_options or {})
        if self.method is not None:
            self.saliency_options = with_contrast(self.method, self.saliency_options, o.contrast)
            saliency_pkg.check_options(self.method, self.saliency_options)
        self.sc_features = o.sc_resolution == "features"
        if self.sc_features:
            self.saliency_options["upsample"] = False
        if class_weight is not None:
            self.register_buffer("class_weight", torch.as_tensor(class_weight, dtype=torch.float32))
        else:
            self.class_weight = None

    @property
    def baseline(self) -> bool:
        return self.method is None

    # ------------------------------------------------------------------------------------------
    def maps_and_logits(self, x: torch.Tensor):
        """``(logits, maps)`` from one forward pass; maps differentiable w.r.t. the parameters."""
        if self.method is None:
            raise ConfigError("SIBNetLoss.maps_and_logits: the baseline loss (saliency=None) computes no maps")
        forward = getattr(self.method, "forward_with_logits", None)
        if forward is not None:
            return forward(self.model, x, create_graph=True, **self.saliency_options)
        logits = self.model(x)
        return logits, self.method(self.model, x, create_graph=True, **self.saliency_options)

    def embed_fn(self, x: torch.Tensor):
        """The callable that embeds a (B*K, H, W) stack of maps with the model's own encoder."""
        encoder = _unwrap(self.model)
        channels = x.shape[1]

        def embed(stack: torch.Tensor) -> torch.Tensor:
            if self.options.embed == "image":
                k = stack.shape[0] // x.shape[0]
                inputs = x.repeat_interleave(k, dim=0) * stack.unsqueeze(1)
            else:
                inputs = stack.unsqueeze(1).expand(-1, channels, *stack.shape[1:])
            if self.embed_size is not None and max(inputs.shape[2:]) > self.embed_size:
                inputs = resize_linear(inputs, (self.embed_size,) * (inputs.dim() - 2))
            try:
                with eval_norm(encoder):
                    if self.options.embed_grad == "maps":
                        with frozen_parameters(encoder):
                            return penultimate(encoder, inputs)
                    return penultimate(encoder, inputs)
            except RuntimeError as exc:
                if "too small" in str(exc) or "Kernel size can't be greater" in str(exc):
                    raise ConfigError(f"embed_size={self.embed_size}: maps of {tuple(inputs.shape[2:])} pixels are "
                                      f"too small for {type(encoder).__name__} (DenseNet-121 and the ResNets "
                                      "need at least 32)") from None
                raise

        return embed

    def classification_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.task == "multilabel":
            return weighted_bce(logits, y, self.class_weight)
        return weighted_ce(logits, y, self.class_weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        """``(total, terms)`` of a batch; ``y=None``: an unlabeled batch (L_CD and L_SC only, SIBNet+)."""
        o = self.options
        zero = x.new_zeros(())
        if self.baseline:
            if y is None:
                raise ConfigError("an unlabeled batch (y=None) needs the saliency terms; the baseline has none")
            logits = self.model(x)
            wce = self.classification_loss(logits, y)
            return wce, self._terms({"wce": wce}, {"wce": wce}, wce, logits)
        logits, maps = self.maps_and_logits(x)
        check_maps(maps)  # once: the functional parts below are told so (checked=True)
        if o.normalise:
            maps = normalise_maps(maps, checked=True)
        raw = {}
        if y is not None:
            raw["wce"] = self.classification_loss(logits, y)
        if o.use_sc:
            raw["sc"] = spatial_coherence(maps, radius=o.radius, threshold=o.threshold,
                                          background_cluster=o.background_cluster, scale=o.sc_scale, checked=True)
        if o.use_cd:
            cd_maps = maps
            if self.sc_features:
                cd_maps = resize_linear(maps, x.shape[2:])
            raw["cd"] = self.distinctiveness(cd_maps, x)
        todo = self.balance.to_observe(raw) if y is not None and self.model.training and torch.is_grad_enabled() \
            else {}
        if todo:  # gradient: the norms of the terms still without a normaliser only (one backward pass each)
            self.balance.update(gradient_norms(todo, _unwrap(self.model).parameters())
                                if self.balance.mode == "gradient" else todo)
        lam = {"wce": 1.0, "cd": self.lambda_cd, "sc": self.lambda_sc}
        weighted = {k: v * (lam[k] / self.balance.divisor(k)) for k, v in raw.items()}
        total = sum(weighted.values(), zero)
        terms = self._terms(raw, weighted, total, logits)
        if maps.shape[1] > 1:  # the maps are normalised already unless normalise=False
            shown = maps.detach() if o.normalise else normalise_maps(maps.detach(), checked=True)
            terms["map_cos"] = pairwise_cosine(shown.flatten(2)).mean()
        return total, terms

    def distinctiveness(self, maps: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """L_CD of checked, normalised (B, K, H, W) maps: on their embeddings (eq. 1) or on the maps
        themselves; cos or |cos|."""
        o = self.options
        b, k = maps.shape[:2]
        if o.cd_space == "embedding" and not o.cd_abs:
            return class_distinctiveness(maps, self.embed_fn(x), checked=True)
        z = maps.reshape(b, k, -1) if o.cd_space == "maps" else embed_maps(maps, self.embed_fn(x), checked=True)
        if k < 2:
            return z.sum() * 0.0
        cos = pairwise_cosine(z)
        return (cos.abs() if o.cd_abs else cos).mean()

    @staticmethod
    def _terms(raw: dict, weighted: dict, total, logits):
        zero = total.detach().new_zeros(())
        terms = {k: raw.get(k, zero).detach() for k in ("wce", "cd", "sc")}
        terms.update({f"{k}_w": weighted.get(k, zero).detach() for k in ("wce", "cd", "sc")})
        terms.update({"total": total.detach(), "logits": logits.detach()})
        return terms

    def extra_repr(self) -> str:
        if self.baseline:
            return f"baseline, task={self.task}"
        o = self.options
        name = getattr(self.method, "__name__", repr(self.method))
        return (f"saliency={name}, lambda_cd={self.lambda_cd}, lambda_sc={self.lambda_sc}, use_cd={o.use_cd}, "
                f"use_sc={o.use_sc}, embed={o.embed}, embed_grad={o.embed_grad}, radius={o.radius}, "
                f"threshold={o.threshold}, embed_size={o.embed_size}, sc_scale={o.sc_scale}, "
                f"balance={self.balance.mode}, cd_space={o.cd_space}, cd_abs={o.cd_abs}")
