"""Effect of ``loss.embed_size`` on SIBNet training speed and validation AUROC (same seeds).

Trains DenseNet-121 with SIBNet (gradcam by default) on the embedded synthetic data through the
``sibnet train`` command for each embed size and seed, and prints the mean epoch time and the best
validation AUROC of each run, plus the time ratio to the full-resolution embedding.

    python benchmarks/embed_size.py --sizes none 64 32 --seeds 0 1 --epochs 3 --image-size 64
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
from pathlib import Path


def run(out: Path, embed: str, seed: int, args) -> dict:
    run_dir = out / f"embed-{embed}-seed{seed}"
    metrics = run_dir / "metrics.csv"
    finished = metrics.exists() and len(list(csv.DictReader(metrics.open()))) >= args.epochs
    if not finished:  # not run, or cut off before its last epoch: train it (again) from the start
        cmd = [sys.executable, "-m", "sibnet", "train", "--out", str(run_dir), "--overwrite", "--no-progress",
               "--seed", str(seed), "--device", "cpu", f"model.name={args.model}", f"loss.saliency={args.saliency}",
               f"loss.embed_size={'null' if embed == 'none' else embed}", f"data.image_size={args.image_size}",
               f"data.options.n={args.n}", f"data.batch_size={args.batch_size}", f"train.epochs={args.epochs}"]
        subprocess.run(cmd, check=True)
    rows = list(csv.DictReader(metrics.open()))
    return {"embed": embed, "seed": seed, "seconds": statistics.mean(float(r["seconds"]) for r in rows),
            "best_val_auroc": max(float(r["val_auroc"]) for r in rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["none", "64", "32"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--model", default="densenet121")
    parser.add_argument("--saliency", default="gradcam")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-embed-size"))
    args = parser.parse_args()
    print(f"threads={os.environ.get('OMP_NUM_THREADS', 'default')} load={os.getloadavg()}")
    results = [run(args.out, e, s, args) for e in args.sizes for s in args.seeds]
    full = statistics.mean(r["seconds"] for r in results if r["embed"] == args.sizes[0])
    print(f"{'embed_size':>10} {'seed':>4} {'s/epoch':>8} {'ratio':>6} {'best val AUROC':>14}")
    for r in results:
        print(f"{r['embed']:>10} {r['seed']:>4} {r['seconds']:8.1f} {r['seconds'] / full:6.2f} "
              f"{r['best_val_auroc']:14.3f}")
    for e in args.sizes:
        aucs = [r["best_val_auroc"] for r in results if r["embed"] == e]
        spread = max(aucs) - min(aucs)
        print(f"embed_size={e}: mean best val AUROC {statistics.mean(aucs):.3f} (seed spread {spread:.3f})")


if __name__ == "__main__":
    main()
