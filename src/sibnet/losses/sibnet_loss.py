"""``SIBNetLoss``: weighted cross-entropy + lambda1 L_CD + lambda2 L_SC for any classifier (eq. 3).

One forward pass gives the logits and, through the saliency method, all K class maps
(differentiable w.r.t. the parameters). The maps are normalised (DESIGN decision 2), embedded by
the model's own encoder with BatchNorm in eval semantics and without updating any statistics
(decision 3), and clustered on their detached values for L_SC (decision 4). An unlabeled batch
(``y=None``) contributes only lambda1 L_CD + lambda2 L_SC (SIBNet+, decision 6).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import saliency as saliency_pkg
from ..errors import ConfigError
from ..models.embedding import frozen_parameters, penultimate
from ..saliency.state import eval_norm
from .balance import BALANCES, LossBalance
from .classification import weighted_bce, weighted_ce
from .coherence import SCALES, spatial_coherence
from .distinctiveness import class_distinctiveness, embed_maps, pairwise_cosine
from .normalise import normalise_maps

#: (lambda1, lambda2) used when the caller gives none (DESIGN decision 7)
DEFAULT_LAMBDAS = {
    "deep_taylor": (1.2, 0.9),
    "gradcam": (1.4, 1.0),
    "lrp_epsilon": (1.1, 0.8),
    "lrp_alpha_beta": (1.1, 0.8),
}
FALLBACK_LAMBDAS = (1.0, 1.0)
#: the default loss balance (:mod:`sibnet.losses.balance`)
DEFAULT_BALANCE = "first_step"
#: what ``contrast="auto"`` means for a method that takes the option (the relevance methods)
DEFAULT_CONTRAST = "clrp"
CD_SPACES = ("embedding", "maps")


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def _with_contrast(method, options: dict, contrast: str) -> dict:
    """The saliency options with ``contrast`` resolved for ``method`` (see SIBNetLoss)."""
    from ..saliency.contrast import CONTRASTS

    if contrast not in CONTRASTS + ("auto",):
        raise ConfigError(f"contrast: expected auto or one of {', '.join(CONTRASTS)}, got {contrast!r}")
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
        saliency: a method name of :mod:`sibnet.saliency`, a callable with the same signature, or
            ``None`` for the plain baseline (weighted cross-entropy only, no maps computed).
        lambda_cd, lambda_sc: weights of L_CD and L_SC; ``None`` takes the method's default.
        task: "multilabel" (weighted BCE, ``class_weight`` = pos_weight) or "multiclass" (weighted CE).
        use_cd, use_sc: the ablation switches.
        embed: "maps" (Z_c embeds the map S_c) or "image" (Z_c embeds x * S_c).
        embed_grad: "all" (gradients reach the maps and the encoder used to embed them) or "maps".
        normalise: ReLU + divide by the per-map maximum before both terms.
        radius, threshold, background_cluster: the L_SC neighbourhood and clustering.
        embed_size: resolution (pixels) at which maps are embedded when the input is larger (default 32:
            the embedding pass of the B·K maps dominates the step's cost; see docs/benchmarks.md);
            ``None`` embeds at the input size.
        sc_resolution: "input" or "features" (Grad-CAM only: L_SC on the feature-map-sized maps).
        sc_scale: "sum" (eq. 2: the sum per map, DESIGN decision 4) or "pair_mean" (that sum divided
            by the map's number of same-cluster pairs; an option outside the paper, see
            :func:`sibnet.losses.spatial_coherence`).
        saliency_options: extra keyword options for the saliency method.
        balance: "none" (raw terms), "first_step" (each term divided by its own value at the first
            training step, as the published SIBNet training code does) or "running" (by a
            bias-corrected running mean of its value, ``balance_momentum``); see
            :mod:`sibnet.losses.balance`. The lambdas weigh the balanced terms.
        cd_space: "embedding" (L_CD on the model's embeddings of the maps, eq. 1) or "maps" (the
            cosine of the flattened maps themselves, the published code's default).
        cd_abs: L_CD as the mean of |cos| instead of cos (the published code's choice).
        contrast: class-contrastive relevance (:mod:`sibnet.saliency.contrast`) for the methods that
            take it (deep_taylor, lrp_epsilon, lrp_alpha_beta): "none", "clrp", "sglrp", or "auto"
            (``DEFAULT_CONTRAST`` for those methods, "none" for the others, e.g. gradcam). A
            ``contrast`` in ``saliency_options`` wins.

    ``loss_fn(x, y) -> (total, terms)`` with ``terms`` holding detached scalars "wce", "cd", "sc"
    (raw), "wce_w", "cd_w", "sc_w" (each term's share of the total: lambda x term / normaliser),
    "total", "map_cos" (the mean pairwise cosine of the batch's normalised class maps) and the
    detached "logits".
    """

    def __init__(self, model: nn.Module, saliency="deep_taylor", lambda_cd: float | None = None,
                 lambda_sc: float | None = None, *, task: str = "multilabel", class_weight=None,
                 use_cd: bool = True, use_sc: bool = True, embed: str = "maps", embed_grad: str = "all",
                 normalise: bool = True, radius: int = 4, threshold="otsu", background_cluster: bool = False,
                 embed_size: int | None = 32, sc_resolution: str = "input", sc_scale: str = "sum",
                 saliency_options: dict | None = None, balance: str = DEFAULT_BALANCE, balance_momentum: float = 0.99,
                 cd_space: str = "embedding", cd_abs: bool = False, contrast: str = "auto"):
        super().__init__()
        if task not in ("multilabel", "multiclass"):
            raise ConfigError(f"task: expected 'multilabel' or 'multiclass', got {task!r}")
        if embed not in ("maps", "image"):
            raise ConfigError(f"embed: expected 'maps' or 'image', got {embed!r}")
        if embed_grad not in ("all", "maps"):
            raise ConfigError(f"embed_grad: expected 'all' or 'maps', got {embed_grad!r}")
        if sc_resolution not in ("input", "features"):
            raise ConfigError(f"sc_resolution: expected 'input' or 'features', got {sc_resolution!r}")
        if sc_scale not in SCALES:
            raise ConfigError(f"sc_scale: expected one of {', '.join(SCALES)}, got {sc_scale!r}")
        if cd_space not in CD_SPACES:
            raise ConfigError(f"cd_space: expected one of {', '.join(CD_SPACES)}, got {cd_space!r}")
        if balance not in BALANCES:
            raise ConfigError(f"balance: expected one of {', '.join(BALANCES)}, got {balance!r}")
        if embed_size is not None and (not isinstance(embed_size, int) or embed_size < 8):
            raise ConfigError(f"embed_size: expected None or an integer >= 8, got {embed_size!r}")
        # not registered as a submodule: the loss holds no parameters of its own, and its
        # state_dict/train()/to() never reach into the user's model
        object.__setattr__(self, "model", model)
        self.task = task
        self.method = None if saliency is None or not (use_cd or use_sc) else saliency_pkg.get(saliency)
        name = saliency if isinstance(saliency, str) else None
        default = DEFAULT_LAMBDAS.get(name, FALLBACK_LAMBDAS)
        self.lambda_cd = float(default[0] if lambda_cd is None else lambda_cd)
        self.lambda_sc = float(default[1] if lambda_sc is None else lambda_sc)
        self.use_cd, self.use_sc = use_cd, use_sc
        self.embed, self.embed_grad, self.normalise = embed, embed_grad, normalise
        self.radius, self.threshold, self.background_cluster = radius, threshold, background_cluster
        self.embed_size = embed_size
        self.sc_scale = sc_scale
        self.cd_space, self.cd_abs = cd_space, bool(cd_abs)
        self.balance = LossBalance(balance, balance_momentum)
        self.saliency_options = dict(saliency_options or {})
        if self.method is not None:
            self.saliency_options = _with_contrast(self.method, self.saliency_options, contrast)
            saliency_pkg.check_options(self.method, self.saliency_options)
        self.sc_features = sc_resolution == "features"
        if self.sc_features:
            if name != "gradcam":
                raise ConfigError("sc_resolution='features' applies to the gradcam saliency method only")
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
            if self.embed == "image":
                k = stack.shape[0] // x.shape[0]
                inputs = x.repeat_interleave(k, dim=0) * stack.unsqueeze(1)
            else:
                inputs = stack.unsqueeze(1).expand(-1, channels, *stack.shape[1:])
            if self.embed_size is not None and max(inputs.shape[2:]) > self.embed_size:
                mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[inputs.dim() - 2]
                inputs = F.interpolate(inputs, size=(self.embed_size,) * (inputs.dim() - 2), mode=mode,
                                       align_corners=False)
            try:
                with eval_norm(encoder):
                    if self.embed_grad == "maps":
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
        zero = x.new_zeros(())
        if self.baseline:
            if y is None:
                raise ConfigError("an unlabeled batch (y=None) needs the saliency terms; the baseline has none")
            logits = self.model(x)
            wce = self.classification_loss(logits, y)
            return wce, self._terms({"wce": wce}, {"wce": wce}, wce, logits)
        logits, maps = self.maps_and_logits(x)
        if self.normalise:
            maps = normalise_maps(maps)
        raw = {}
        if y is not None:
            raw["wce"] = self.classification_loss(logits, y)
        if self.use_sc:
            raw["sc"] = spatial_coherence(maps, radius=self.radius, threshold=self.threshold,
                                          background_cluster=self.background_cluster, scale=self.sc_scale)
        if self.use_cd:
            cd_maps = maps
            if self.sc_features:
                cd_maps = F.interpolate(maps, size=x.shape[2:], mode="bilinear", align_corners=False)
            raw["cd"] = self.distinctiveness(cd_maps, x)
        if y is not None and self.model.training and torch.is_grad_enabled():
            self.balance.update(raw)
        lam = {"wce": 1.0, "cd": self.lambda_cd, "sc": self.lambda_sc}
        weighted = {k: v * (lam[k] / self.balance.divisor(k)) for k, v in raw.items()}
        total = sum(weighted.values(), zero)
        terms = self._terms(raw, weighted, total, logits)
        if maps.shape[1] > 1:  # the maps are normalised already unless normalise=False
            shown = maps.detach() if self.normalise else normalise_maps(maps.detach())
            terms["map_cos"] = pairwise_cosine(shown.flatten(2)).mean()
        return total, terms

    def distinctiveness(self, maps: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """L_CD of normalised maps: on their embeddings (eq. 1) or on the maps themselves; cos or |cos|."""
        b, k = maps.shape[:2]
        if self.cd_space == "embedding" and not self.cd_abs:
            return class_distinctiveness(maps, self.embed_fn(x))
        z = maps.reshape(b, k, -1) if self.cd_space == "maps" else embed_maps(maps, self.embed_fn(x))
        if k < 2:
            return z.sum() * 0.0
        cos = pairwise_cosine(z)
        return (cos.abs() if self.cd_abs else cos).mean()

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
        name = getattr(self.method, "__name__", repr(self.method))
        return (f"saliency={name}, lambda_cd={self.lambda_cd}, lambda_sc={self.lambda_sc}, use_cd={self.use_cd}, "
                f"use_sc={self.use_sc}, embed={self.embed}, embed_grad={self.embed_grad}, radius={self.radius}, "
                f"threshold={self.threshold}, embed_size={self.embed_size}, sc_scale={self.sc_scale}, "
                f"balance={self.balance.mode}, cd_space={self.cd_space}, cd_abs={self.cd_abs}")
