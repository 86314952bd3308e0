"""Start from local ImageNet weights: torchvision-style DenseNet-121 / ResNet state dicts mapped onto
the MONAI classifiers of :func:`sibnet.models.build_classifier`.

Conventions
-----------
* The file is read with ``torch.load(weights_only=True)``; a bare state dict, or one under a
  ``"state_dict"``/``"model"`` key, with or without DataParallel's ``module.`` prefix.
* DenseNet key mapping (MONAI's ``densenet._load_state_dict`` logic, extended to the current
  torchvision names): ``...denselayerN.norm.1.weight`` (old files) and ``...denselayerN.norm1.weight``
  (current torchvision) -> ``...denselayerN.layers.norm1.weight``; ``classifier.*`` ->
  ``class_layers.out.*``. ResNet keys (``conv1``, ``bn1``, ``layerN.M.*``, ``downsample``, ``fc``)
  are the same in both libraries.
* The first convolution is adapted to the model's input channels: RGB weights summed over their
  input channels for a one-channel model (a grey image then gives the same response as the RGB
  network on that grey image repeated three times); equal channel counts are copied.
* MONAI's ResNet shortcut convolutions carry a bias that torchvision's lack: it is set to zero
  (the same function as the torchvision network).
* A classifier head of another class count is left as the model initialised it (re-initialised);
  ``num_batches_tracked`` buffers absent from old files keep the model's values.
* Anything else that does not fit -> :class:`~sibnet.errors.SibnetError` listing the missing,
  unexpected and shape-mismatched keys.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import SibnetError
from ..files import load_tensor_file

_DENSE_LAYER = re.compile(
    r"^(.*denselayer\d+)\.(norm|relu|conv)\.?([12])\.(weight|bias|running_mean|running_var|num_batches_tracked)$")
FIRST_CONV = {"densenet121": "features.conv0.weight", "resnet18": "conv1.weight", "resnet50": "conv1.weight",
              "resnet101": "conv1.weight"}
HEAD = {"densenet121": "class_layers.out.", "resnet18": "fc.", "resnet50": "fc.", "resnet101": "fc."}


def torchvision_to_monai(key: str, arch: str) -> str:
    """The MONAI name of a torchvision state-dict key for architecture ``arch``."""
    if arch.startswith("densenet"):
        m = _DENSE_LAYER.match(key)
        if m:
            return f"{m.group(1)}.layers.{m.group(2)}{m.group(3)}.{m.group(4)}"
        if key.startswith("classifier."):
            return "class_layers.out." + key[len("classifier."):]
    return key


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a local file (safe load; wrappers and ``module.`` prefixes removed)."""
    obj = load_tensor_file(path)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SibnetError(f"{path}: expected a state dict (a mapping of parameter names to tensors)")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}


def _adapt_first_conv(w: torch.Tensor, target: torch.Size) -> torch.Tensor | None:
    if w.shape == target:
        return w
    if w.ndim == 4 and w.shape[0] == target[0] and w.shape[2:] == target[2:] and target[1] == 1:
        return w.sum(dim=1, keepdim=True)
    return None


def map_state_dict(state: dict[str, torch.Tensor], model: nn.Module, arch: str, path: str = "state dict"
                   ) -> tuple[dict[str, torch.Tensor], dict]:
    """Map ``state`` onto ``model``'s keys; returns (full state dict to load, report).

    report: ``head_reinitialised`` (bool), ``first_conv`` ("copied" | "summed over RGB"),
    ``loaded`` (number of tensors taken from ``state``).
    """
    arch = arch.lower()
    if arch not in FIRST_CONV:
        raise SibnetError(f"--pretrained: no key mapping for model {arch!r}; supported: {', '.join(FIRST_CONV)}")
    target = model.state_dict()
    mapped = {torchvision_to_monai(k, arch): v for k, v in state.items()}
    head = HEAD[arch]
    report = {"head_reinitialised": False, "first_conv": "copied", "loaded": 0}
    out = dict(target)
    unexpected = [k for k in mapped if k not in target]
    missing = [k for k in target if k not in mapped and not k.endswith("num_batches_tracked")]
    mismatched = []
    head_src = {k: v for k, v in mapped.items() if k.startswith(head) and k in target}
    if not head_src or any(v.shape != target[k].shape for k, v in head_src.items()):
        report["head_reinitialised"] = True  # absent or another class count: keep the model's init
        missing = [k for k in missing if not k.startswith(head)]
    for k, v in mapped.items():
        if k not in target or (report["head_reinitialised"] and k.startswith(head)):
            continue
        if k == FIRST_CONV[arch]:
            w = _adapt_first_conv(v, target[k].shape)
            if w is None:
                mismatched.append(f"{k} {tuple(v.shape)} vs {tuple(target[k].shape)}")
                continue
            if w is not v:
                report["first_conv"] = "summed over RGB"
            v = w
        elif v.shape != target[k].shape:
            mismatched.append(f"{k} {tuple(v.shape)} vs {tuple(target[k].shape)}")
            continue
        out[k] = v.to(dtype=target[k].dtype)
        report["loaded"] += 1
    if arch.startswith("resnet"):  # MONAI's shortcut conv has a bias, torchvision's none: zero it
        zeroed = [k for k in missing if re.search(r"\.downsample\.0\.bias$", k)]
        for k in zeroed:
            out[k] = torch.zeros_like(target[k])
        missing = [k for k in missing if k not in zeroed]
    if missing or unexpected or mismatched:
        parts = []
        for name, keys in (("missing", missing), ("unexpected", unexpected), ("shape-mismatched", mismatched)):
            if keys:
                more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
                parts.append(f"{len(keys)} {name}: {', '.join(keys[:5])}{more}")
        raise SibnetError(f"{path}: does not fit a torchvision-style {arch}: {'; '.join(parts)}")
    return out, report


def load_pretrained(model: nn.Module, path: str | Path, arch: str) -> dict:
    """Load a local torchvision-style state dict into ``model`` (in place); returns the report."""
    state = read_state_dict(path)
    full, report = map_state_dict(state, model, arch, str(path))
    model.load_state_dict(full)
    return report
