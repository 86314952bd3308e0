"""Cost of scoring images with :mod:`sibnet.monitor` relative to a plain forward pass.

For one model and batch, times (median of ``--repeats`` after ``--warmup`` calls, in one run):

* ``forward``: ``model(x)`` under ``torch.no_grad`` in eval mode (what a deployed model does anyway);
* ``standard``: the standard scores alone (one forward giving the logits and penultimate features,
  MSP, energy, Mahalanobis distance against a fitted profile);
* ``full``: :func:`sibnet.monitor.score` with every score (adds the saliency pass of all K maps,
  the embedding pass of the B*K maps and the spatial-coherence sums).

and prints milliseconds per image and the ratios to ``forward``.

    python benchmarks/monitor.py --model resnet18 --image-size 64 --batch 32 --method gradcam
"""

from __future__ import annotations

import argparse

import torch
from _common import machine_header, median, time_calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from sibnet.models.classifier import build_classifier
    from sibnet.monitor import fit, score
    from sibnet.monitor.core import derived_scores
    from sibnet.monitor.scores import image_scores

    torch.manual_seed(0)
    model = build_classifier(args.model, 1, args.classes).to(args.device).eval()
    ref = torch.rand(2 * args.batch, 1, args.image_size, args.image_size)
    x = torch.rand(args.batch, 1, args.image_size, args.image_size, device=args.device)
    profile = fit(model, ref, method=args.method, batch_size=args.batch)

    def forward():
        with torch.no_grad():
            model(x)

    def standard():
        raw = image_scores(model, x, profile.task, saliency=False)
        raw.update(cd=raw["msp"], sc=raw["msp"])  # placeholders: only the standard scores are read
        derived_scores(raw, profile.gaussian, profile.combine)

    def full():
        score(model, profile, x, batch_size=args.batch, check_model=False)

    print(machine_header(f"monitor scoring cost: {args.model}, {args.image_size} px, batch {args.batch}, "
                         f"{args.classes} classes, {args.method}, {args.device}"))
    base = None
    for name, fn in (("forward", forward), ("standard", standard), ("full", full)):
        ms = median(time_calls(fn, warmup=args.warmup, repeats=args.repeats)) / args.batch
        base = base or ms
        print(f"{name:<9} {ms:8.2f} ms/image  {ms / base:6.2f}x forward")


if __name__ == "__main__":
    main()
