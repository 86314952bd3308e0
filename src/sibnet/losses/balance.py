"""Loss balance: each SIBNet term divided by a normaliser of its own before the lambdas weigh it.

The raw terms differ by orders of magnitude (L_SC, a sum per map, is 10-300x the weighted BCE at
32-128 px), so with the paper's lambdas (about 1) one term dominates. Modes:

``none``        the raw terms (the paper's equation as written).
``first_step``  each term divided by the magnitude of its own value at the first training step
                (the published SIBNet training code: every term starts at 1).
``running``     each term divided by a bias-corrected running mean of its magnitude,
                ``m_t = beta m_(t-1) + (1 - beta) |L_t|``, normaliser ``m_t / (1 - beta^n)`` with n
                the number of values seen (the current step's included, so the first step equals
                ``first_step``).
``gradient``    each term divided by the L2 norm of its own gradient with respect to the model's
                trainable parameters at the first training step (one extra backward pass per term,
                at that step only): after the division every term's gradient on the shared weights
                starts with norm 1, so the lambdas weigh the terms' pulls on the weights rather than
                their values (Adam sees their sum; balancing values alone leaves one term's
                gradient free to dominate). The normaliser is fixed after the first step, as
                ``first_step``; the term's own value never enters it.

Conventions:
* Normalisers are estimated from labeled training batches only (the model in train mode, gradients
  enabled) and applied to every batch, SIBNet+ unlabeled batches included; they are detached
  constants of each step.
* Under ``torch.distributed`` the observed values are averaged over the ranks before they are used,
  so every rank holds the same normalisers.
* ``gradient``: the observed value of a term is its gradient norm (:func:`gradient_norms`), computed
  with ``torch.autograd.grad`` (nothing is accumulated into ``.grad``, no model state changes), of
  the gradient averaged over DDP ranks (the norm of the whole step's batch). A term with no path to
  any parameter has norm 0.
* A term whose observed value is 0 or not finite has no normaliser yet (first_step: it takes the
  first later value that is finite and nonzero; running: non-finite values are skipped, and a
  running mean of 0 is not used). Until then the term enters the total unnormalised (divisor 1),
  which for a zero term adds nothing; a one-line warning says so once per term.
* The normalisers are buffers of :class:`LossBalance` (state_dict), saved in checkpoints and
  restored on resume.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.distributed as dist
from torch import nn

from ..loss_options import Balance, LossOptions, check_option, choices

BALANCES = choices(Balance)
TERM_NAMES = ("wce", "cd", "sc")
FIXED_AFTER_FIRST = ("first_step", "gradient")  # modes whose normalisers never change once set
DESCRIPTIONS = {  # one clause per mode, for reports
    "none": "the raw terms",
    "first_step": "each term divided by its own value at the first step",
    "running": "each term divided by a running mean of its own value",
    "gradient": "each term divided by the norm of its own gradient on the weights at the first step",
}


def _all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values)
        values /= dist.get_world_size()
    return values


def gradient_norms(terms: dict[str, torch.Tensor], parameters) -> dict[str, torch.Tensor]:
    """The L2 norm of each term's gradient with respect to ``parameters`` (those that require a gradient),
    the graph kept for the step's own backward; ``.grad`` is not touched. Under ``torch.distributed`` the
    gradients are averaged over the ranks before the norm is taken (as DistributedDataParallel averages the
    step's gradients), so the norm is that of the whole step's batch."""
    params = [p for p in parameters if p.requires_grad]
    out = {}
    for name, value in terms.items():
        if not value.requires_grad or not params:
            flat = value.detach().new_zeros(1, dtype=torch.float64)
        else:
            grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
            flat = torch.cat([(g if g is not None else torch.zeros_like(p)).detach().double().reshape(-1)
                              for g, p in zip(grads, params)])
        out[name] = _all_reduce_mean(flat).norm()
    return out


class LossBalance(nn.Module):
    """The normalisers of the terms ``wce``, ``cd``, ``sc`` (see the module doc)."""

    # buffers (register_buffer), one entry per term of TERM_NAMES
    scale: torch.Tensor
    running: torch.Tensor
    count: torch.Tensor

    def __init__(self, mode: str = "none", momentum: float = LossOptions.balance_momentum):
        super().__init__()
        check_option("balance", mode)
        check_option("balance_momentum", momentum)
        self.mode, self.momentum = mode, float(momentum)
        n = len(TERM_NAMES)
        self.register_buffer("scale", torch.full((n,), math.nan, dtype=torch.float64))
        self.register_buffer("running", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("count", torch.zeros(n, dtype=torch.long))
        self._warned: set[str] = set()

    def to_observe(self, values: dict) -> dict:
        """The terms of ``values`` this step must observe: none for ``none``; for the first-step modes only
        those without a normaliser yet (none once all are fixed: no collective, no device sync and, for
        ``gradient``, no extra backward pass on later steps; the same on every rank); every term for
        ``running``."""
        if self.mode == "none":
            return {}
        if self.mode in FIXED_AFTER_FIRST:
            return {k: v for k, v in values.items() if k in TERM_NAMES and not int(self.count[TERM_NAMES.index(k)])}
        return dict(values)

    def update(self, values: dict[str, torch.Tensor]) -> None:
        """Observe this step's values of the terms present (detached; averaged over ranks); for ``gradient``
        the values are the terms' gradient norms (:func:`gradient_norms`)."""
        values = self.to_observe(values)
        if not values:
            return
        names = [k for k in TERM_NAMES if k in values]
        observed = torch.stack([values[k].detach().double().abs().reshape(()) for k in names])
        observed = _all_reduce_mean(observed.to(self.scale.device)).cpu()
        for name, value in zip(names, observed.tolist()):
            i = TERM_NAMES.index(name)
            usable = math.isfinite(value)
            if self.mode in FIXED_AFTER_FIRST:
                if int(self.count[i]) == 0 and usable and value > 0:
                    self.scale[i] = value
                    self.count[i] = 1
            elif usable:
                self.count[i] += 1
                self.running[i] = self.momentum * self.running[i] + (1 - self.momentum) * value
                self.scale[i] = self.running[i] / (1 - self.momentum ** int(self.count[i]))
            if not self._has_scale(i) and name not in self._warned:
                self._warned.add(name)
                what = "the gradient norm of the term" if self.mode == "gradient" else "the term"
                warnings.warn(f"loss balance ({self.mode}): {what} {name} is {value:g} at this step, so it has no "
                              "normaliser yet; it enters the total unnormalised until it is finite and nonzero",
                              RuntimeWarning, stacklevel=3)

    def _has_scale(self, i: int) -> bool:
        s = float(self.scale[i])
        return math.isfinite(s) and s > 0

    def divisor(self, name: str) -> float:
        """What the term ``name`` is divided by (1 when there is no balance or no normaliser yet)."""
        if self.mode == "none":
            return 1.0
        i = TERM_NAMES.index(name)
        return float(self.scale[i]) if self._has_scale(i) else 1.0

    def normalisers(self) -> dict[str, float]:
        return {k: self.divisor(k) for k in TERM_NAMES}

    def extra_repr(self) -> str:
        return f"mode={self.mode}, momentum={self.momentum}"
