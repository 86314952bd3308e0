"""Time all K class maps of one batch: sibnet's batched methods against per-class library loops.

Configuration (issue "Foundation ... saliency maps", Performance): MONAI DenseNet121 with 1 input
channel and K=5 outputs, eval mode, a batch of 8 random images at 128x128 (``--size 64`` for the
small setting). Four timings, each the median of ``--repeats`` calls after 2 warm-up calls:

- sibnet ``gradcam`` (one forward, one batched backward for all K maps);
- Captum ``LayerGradCam(relu_attributions=True)`` on ``class_layers.relu`` + ``LayerAttribution.
  interpolate(..., "bilinear")``, one call per class (K forwards and K backwards);
- sibnet ``deep_taylor``;
- Zennit 0.5.1 ``Gradient`` attributor with the DESIGN composite (BatchNorm: Pass, Linear/Conv:
  ZPlus(stabilizer=1e-12, zero_params="bias")), one call per class with the same one-hot start.

Captum and Zennit run on a deep copy of the model with in-place ReLUs off (as in the reference
tests); maps are created without ``create_graph``. The script also prints the largest difference
of each pair of maps relative to the reference map's maximum, so a fast but wrong result shows.

    OMP_NUM_THREADS=2 python benchmarks/saliency.py [--size 128] [--batch 8] [--repeats 7]
"""

from __future__ import annotations

import argparse
import copy
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, machine_header, median, time_calls  # noqa: E402

from sibnet import saliency  # noqa: E402
from sibnet.models import build_classifier  # noqa: E402

LAYER = "class_layers.relu"  # DenseNet121's last feature map, the input of its global pooling


def no_inplace(model: torch.nn.Module) -> torch.nn.Module:
    for m in model.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    return model


def install_torchvision_stub() -> None:
    """Zennit 0.5.1 imports torchvision's ResNet blocks; torchvision does not install beside torch 2.13."""
    if "torchvision" in sys.modules:
        return
    tv = types.ModuleType("torchvision")
    models = types.ModuleType("torchvision.models")
    resnet = types.ModuleType("torchvision.models.resnet")
    resnet.BasicBlock = type("BasicBlock", (torch.nn.Module,), {})
    resnet.Bottleneck = type("Bottleneck", (torch.nn.Module,), {})
    tv.models, models.resnet = models, resnet
    sys.modules.update({"torchvision": tv, "torchvision.models": models, "torchvision.models.resnet": resnet})


def captum_loop(model, num_classes):
    from captum.attr import LayerAttribution, LayerGradCam

    ref = no_inplace(copy.deepcopy(model))
    gc = LayerGradCam(ref, ref.get_submodule(LAYER))

    def run(x):
        maps = []
        for c in range(num_classes):
            a = gc.attribute(x, target=c, relu_attributions=True)
            maps.append(LayerAttribution.interpolate(a, x.shape[2:], "bilinear"))
        return torch.cat(maps, dim=1)

    return run


def zennit_loop(model, num_classes):
    install_torchvision_stub()
    from zennit.attribution import Gradient
    from zennit.composites import LayerMapComposite
    from zennit.rules import Pass, ZPlus
    from zennit.types import BatchNorm, Linear

    ref = no_inplace(copy.deepcopy(model))
    composite = LayerMapComposite([(BatchNorm, Pass()), (Linear, ZPlus(stabilizer=1e-12, zero_params="bias"))])

    def run(x):
        maps = []
        with Gradient(ref, composite) as attributor:
            for c in range(num_classes):
                start = torch.zeros(x.shape[0], num_classes, dtype=x.dtype)
                start[:, c] = 1
                _, rel = attributor(x.clone().requires_grad_(True), start)
                maps.append(rel.sum(1, keepdim=True))
        return torch.cat(maps, dim=1)

    return run


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| over each map relative to the reference map's maximum, worst map."""
    scale = b.abs().flatten(2).amax(-1).clamp_min(1e-30)
    return ((a - b).abs().flatten(2).amax(-1) / scale).max().item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--classes", type=int, default=5)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_classifier("densenet121", in_channels=1, num_classes=args.classes).eval()
    x = torch.randn(args.batch, 1, args.size, args.size)
    k = args.classes

    print(machine_header("saliency maps: all K maps of one batch"))
    print(f"# MONAI DenseNet121, 1 channel, K={k}, batch {args.batch}, {args.size}x{args.size}, eval mode, "
          f"median of {args.repeats} calls after {args.warmup} warm-up calls")

    captum_fn, zennit_fn = captum_loop(model, k), zennit_loop(model, k)
    pairs = [
        ("gradcam", lambda: saliency.gradcam(model, x), "Captum LayerGradCam loop", lambda: captum_fn(x)),
        ("deep_taylor", lambda: saliency.deep_taylor(model, x), "Zennit ZPlus loop", lambda: zennit_fn(x)),
    ]
    rows = []
    for name, ours, ref_name, ref in pairs:
        err = rel_err(ours(), ref())
        t_ours = median(time_calls(ours, warmup=args.warmup, repeats=args.repeats))
        t_ref = median(time_calls(ref, warmup=args.warmup, repeats=args.repeats))
        rows.append((name, t_ours, ref_name, t_ref, err))

    print(f"{'sibnet method':<14} {'sibnet ms':>10}  {'reference':<26} {'reference ms':>12} {'speed-up':>9} "
          f"{'max rel diff':>13}")
    for name, t_ours, ref_name, t_ref, err in rows:
        print(f"{name:<14} {t_ours:10.1f}  {ref_name:<26} {t_ref:12.1f} {t_ref / t_ours:8.2f}x {err:13.1e}")
    print(f"# load average (1, 5, 15 min) at end: {load_average()}")


if __name__ == "__main__":
    main()
