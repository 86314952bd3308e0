"""How hard each SIBNet term pulls on the model's weights at the first step: the value of each term and
the L2 norm of its gradient with respect to the parameters, for a fresh DenseNet-121 and for a converged
baseline, on one training batch of the synthetic data (64 px, batch 16).

The value balance (``first_step``) divides each term by its value, so the gradient a term sends per unit
of weight is (gradient norm / value) x lambda; the last columns give that pull relative to the BCE's.
The gradient balance (``gradient``) divides by the gradient norm instead, so every ratio is lambda.

    python docs/results/gradient_norms.py [--checkpoint RUN/best.pt] \
        > docs/results/synthetic-converged/gradient-norms.md
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import torch

from sibnet.data.registry import build_dataset
from sibnet.losses import SIBNetLoss
from sibnet.models import build_classifier
from sibnet.training.checkpoint import load_model_from_checkpoint

TERMS = ("wce", "cd", "sc")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="runs/study15/shortcut-off/baseline/fold0-seed0/best.pt",
                    help="a converged baseline (64 px synthetic); skipped when absent")
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    torch.manual_seed(0)
    ds = build_dataset("synthetic", split="train", image_size=64, seed=0)
    items = [ds[i] for i in range(args.batch)]
    x = torch.stack([it["image"] for it in items])
    y = torch.stack([torch.as_tensor(it["label"]) for it in items]).float()
    models = [("fresh DenseNet-121 (seed 0)", lambda: build_classifier("densenet121", x.shape[1], y.shape[1]))]
    try:
        load_model_from_checkpoint(args.checkpoint)
        models.append((f"converged baseline ({args.checkpoint})",
                       lambda: load_model_from_checkpoint(args.checkpoint)[0]))
    except Exception as exc:  # noqa: BLE001 - reported in the output
        print(f"(no converged baseline: {exc})", file=sys.stderr)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print("# Gradient norms of the SIBNet terms at one step\n")
    print(f"- command: `python docs/results/gradient_norms.py --checkpoint {args.checkpoint} --batch {args.batch}`")
    print(f"- data: synthetic train split, images 0-{args.batch - 1}, 64 px; code version: git {commit}")
    print("- value: the raw term; |grad|: L2 norm of its gradient w.r.t. all trainable parameters; "
          "pull under first_step: (|grad| / value) x lambda, relative to the BCE's (no class weights here)\n")
    print("| model | maps | lambda_cd, lambda_sc | value wce / cd / sc | abs(grad) wce / cd / sc "
          "| pull under first_step cd / sc (x BCE's) |")
    print("|---|---|---|---|---|---|")
    for label, make in models:
        for saliency, contrast in (("gradcam", "none"), ("deep_taylor", "clrp")):
            torch.manual_seed(0)
            net = make().train()
            fn = SIBNetLoss(net, saliency=saliency, contrast=contrast, balance="gradient")
            _, terms = fn(x, y)
            norms = fn.balance.normalisers()
            lam = {"cd": fn.lambda_cd, "sc": fn.lambda_sc}
            per_unit = {k: norms[k] / float(terms[k]) for k in TERMS}
            pull = {k: lam[k] * per_unit[k] / per_unit["wce"] for k in ("cd", "sc")}
            maps = saliency + (f" + {contrast.upper()}" if contrast != "none" else "")
            print(f"| {label} | {maps} | {lam['cd']:g}, {lam['sc']:g} | "
                  + " / ".join(f"{float(terms[k]):.3g}" for k in TERMS) + " | "
                  + " / ".join(f"{norms[k]:.3g}" for k in TERMS) + " | "
                  + f"{pull['cd']:.2g} / {pull['sc']:.2g} |")


if __name__ == "__main__":
    main()
