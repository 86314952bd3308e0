"""All K class maps from one batched backward pass."""

from __future__ import annotations

import torch


def start_relevance(logits: torch.Tensor, targets=None, *, scale: str = "one_hot") -> torch.Tensor:
    """Backward seeds, one per requested class: a (K', B, K) stack of one-hot tensors.

    ``scale="relu_logit"`` multiplies each seed by ``ReLU(logit_c)`` (iNNvestigate's display scaling).
    """
    num_outputs = logits.shape[1]
    classes = target_list(targets, num_outputs)
    seeds = torch.zeros(len(classes), *logits.shape, dtype=logits.dtype, device=logits.device)
    for i, c in enumerate(classes):
        seeds[i, :, c] = 1.0
    if scale == "relu_logit":
        seeds = seeds * logits.relu().unsqueeze(0)
    elif scale != "one_hot":
        raise ValueError(f"start must be 'one_hot' or 'relu_logit', got {scale!r}")
    return seeds


def target_list(targets, num_outputs: int) -> list[int]:
    """The requested class indices (all K when ``targets`` is None), each checked to lie in [0, K)."""
    if targets is None:
        return list(range(num_outputs))
    if isinstance(targets, int):
        targets = [targets]
    classes = [int(t) for t in (targets.tolist() if torch.is_tensor(targets) else targets)]
    bad = [c for c in classes if not 0 <= c < num_outputs]
    if bad or not classes:
        raise ValueError(f"targets must be class indices in [0, {num_outputs}), got {classes}")
    return classes


def batched_vjp(outputs: torch.Tensor, inputs: torch.Tensor, seeds: torch.Tensor, *, create_graph: bool,
                loop: bool = False) -> torch.Tensor:
    """``d outputs / d inputs`` applied to each seed: (K', *inputs.shape), in one vectorised pass.

    The graph is retained (the caller's training loss may still need it); it is freed with
    ``outputs``. ``loop=True`` runs the same computation one seed at a time (a reference for tests).
    """

    def vjp(seed):
        return torch.autograd.grad(outputs, inputs, seed, retain_graph=True, create_graph=create_graph)[0]

    if loop:
        return torch.stack([vjp(seed) for seed in seeds])
    return torch.func.vmap(vjp)(seeds)
