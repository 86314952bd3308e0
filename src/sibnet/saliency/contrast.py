"""Class-contrastive relevance: CLRP and SGLRP from the K maps of one batched pass.

z+ (deep Taylor), LRP-epsilon and LRP-alpha-beta maps hardly depend on the class they start from
(Gu, Yang, Tresp 2018; Sixt, Granz, Landgraf 2020): most of the relevance is shared by every
class. The contrastive variants subtract a *dual* map, started from the other classes:

* CLRP (Gu et al., "Understanding individual decisions of CNNs via contrastive backpropagation",
  ACCV 2018; CLRP1): the target t is started at its score, each other class at that score / (K-1);
  ``R = ReLU(R_t - R_dual * sum(R_t) / sum(R_dual))``.
* SGLRP (Iwana, Kuroki, Uchida, ICCV workshops 2019), with ``y = softmax(logits)``: the target is
  started at ``y_t (1 - y_t) + 1e-8`` and each other class i at ``y_t y_i``; the same scaled
  subtraction, then ReLU (as in the authors' reference code, github uchidalab/softmaxgradient-lrp).

With the forward activations fixed, all three propagation rules are linear in the starting
relevance, so each dual map is a weighted sum of the one-hot class maps ``S_i`` that one batched
pass already gives, and the common start factor cancels in the ratio:

* CLRP: ``R_t = f_t (S_t - M_t sum(S_t) / sum(M_t))`` with ``M_t`` the mean of ``S_i``, i != t;
* SGLRP: the same with ``M_t = sum_{i != t} y_i S_i`` (softmax-weighted dual).

``f_t`` is the target's start factor: 1 with ``start="one_hot"`` (every class gets a map, as for
the plain methods), and with ``start="relu_logit"`` ReLU(logit_t) for CLRP (its score, clipped as
the plain methods clip it) and ``y_t (1 - y_t) + 1e-8`` for SGLRP. Sums run over all input
channels and positions of one image; a dual sum of zero is stabilised by ``eps`` with its sign.

Readings (also in docs/design.md): SGLRP's softmax is taken over the K logits for multi-label models
too (the classes compete for the map, which is what class distinctiveness asks of them; a sigmoid
output has no dependence on the other classes to contrast with). The softmax weights keep their
gradient, so the maps stay an exact, differentiable function of the parameters.
"""

from __future__ import annotations

import torch

CONTRASTS = ("none", "clrp", "sglrp")


def dual_weights(logits: torch.Tensor, contrast: str) -> torch.Tensor:
    """(B, K, K) weights ``w[b, t, i]`` of the dual map of target t (zero on the diagonal)."""
    b, k = logits.shape
    off = 1.0 - torch.eye(k, dtype=logits.dtype, device=logits.device)
    if contrast == "clrp":
        return (off / max(k - 1, 1)).expand(b, k, k)
    if contrast == "sglrp":
        y = torch.softmax(logits, dim=1)
        return off * y.unsqueeze(1)
    raise ValueError(f"contrast must be one of {', '.join(CONTRASTS)}, got {contrast!r}")


def target_factor(logits: torch.Tensor, contrast: str, start: str) -> torch.Tensor:
    """(B, K) start factor of each target map."""
    if start == "one_hot":
        return torch.ones_like(logits)
    if contrast == "sglrp":
        y = torch.softmax(logits, dim=1)
        return y * (1 - y) + 1e-8
    return logits.relu()


def contrast_maps(maps: torch.Tensor, logits: torch.Tensor, contrast: str, *, start: str = "one_hot",
                  eps: float = 1e-12) -> torch.Tensor:
    """Contrastive maps (B, K, *spatial) from the one-hot maps ``maps`` (B, K, *spatial) of all K classes."""
    if contrast == "none":
        return maps
    b, k = maps.shape[:2]
    if k < 2:  # no other class to contrast with: the map itself
        return (maps * target_factor(logits, contrast, start).reshape(b, k, *([1] * (maps.dim() - 2)))).relu()
    flat = maps.reshape(b, k, -1)
    dual = torch.einsum("bti,bip->btp", dual_weights(logits.to(maps.dtype), contrast), flat)
    s_target, s_dual = flat.sum(dim=2, keepdim=True), dual.sum(dim=2, keepdim=True)
    s_dual = s_dual + torch.where(s_dual >= 0, eps, -eps)
    out = (flat - dual * (s_target / s_dual)) * target_factor(logits.to(maps.dtype), contrast, start).unsqueeze(2)
    return out.relu().reshape(maps.shape)
