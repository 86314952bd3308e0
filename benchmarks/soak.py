"""Soak test: many training steps of SIBNet, watching resident memory and step time.

Each method runs in its own subprocess (fresh allocator, its own RSS): the real training path
(``sibnet.training.build.build_run`` on the configured synthetic dataset, then
``sibnet.training.loop.train_step`` on the epochs' batches in order) for ``--steps`` optimizer
steps. Every ``--every`` steps it records the resident memory (VmRSS from /proc/self/status) and
the median step time of the last window. Memory "grows" when the RSS of the second half of the
run rises by more than ``--noise`` MiB (default 5% of the first window's RSS, at least 16 MiB)
between its first and its last window, or keeps rising through the whole second half; the first
half is the allocator's warm-up (glibc's heap settles over the first steps, see train_step.py).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/soak.py [--steps 500] [--size 32] [--batch 8] \
        [--model resnet18] [--methods gradcam deep_taylor]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import current_rss_mb, machine_header  # noqa: E402


def soak(method: str, args) -> dict:
    """Run ``args.steps`` steps of ``method`` in this process; the per-window figures."""
    from sibnet.config import load_config
    from sibnet.training.build import build_run
    from sibnet.training.distributed import DistEnv
    from sibnet.training.loop import train_loader, train_step
    from sibnet.training.rng import seed_everything

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cfg = load_config(None, [f"loss.saliency={method}", f"model.name={args.model}", f"data.image_size={args.size}",
                             f"data.batch_size={args.batch}", f"data.options={{n: {args.images}}}",
                             "data.val_split=null", "train.device=cpu", "train.progress=false"])
    seed_everything(0)
    run = build_run(cfg, DistEnv())
    run.model.train()
    windows, times, step, epoch = [], [], 0, 0
    rss0 = current_rss_mb()
    while step < args.steps:
        for batch in train_loader(run, epoch):
            t0 = time.perf_counter()
            train_step(run, batch)
            times.append(time.perf_counter() - t0)
            step += 1
            if step % args.every == 0:
                windows.append({"step": step, "rss_mb": round(current_rss_mb(), 1),
                                "ms_per_step": round(1000 * statistics.median(times[-args.every:]), 1)})
                print(json.dumps({"method": method, **windows[-1]}), file=sys.stderr, flush=True)
            if step >= args.steps:
                break
        epoch += 1
    return {"method": method, "rss_before_mb": round(rss0, 1), "windows": windows,
            "ms_per_step_median": round(1000 * statistics.median(times), 1)}


def growth(windows: list[dict], noise: float | None) -> tuple[float, float, bool]:
    """(growth over the second half in MiB, the noise threshold, whether it counts as growth)."""
    rss = [w["rss_mb"] for w in windows]
    half = rss[len(rss) // 2:] or rss
    threshold = noise if noise is not None else max(16.0, 0.05 * rss[0])
    grown = half[-1] - half[0]
    steady_rise = len(half) > 2 and all(b > a for a, b in zip(half, half[1:]))
    return grown, threshold, grown > threshold or (steady_rise and grown > threshold / 4)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--every", type=int, default=50, help="steps between memory readings")
    p.add_argument("--size", type=int, default=32, help="image size in pixels")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--images", type=int, default=256, help="synthetic training images (data.options.n)")
    p.add_argument("--model", default="resnet18", choices=["resnet18", "densenet121", "resnet50"])
    p.add_argument("--methods", nargs="+", default=["gradcam", "deep_taylor"])
    p.add_argument("--noise", type=float, default=None, help="MiB of RSS growth still counted as allocator noise")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(soak(args.child, args)))
        return 0
    print(machine_header(f"soak: {args.steps} steps, {args.model}, {args.size} px, batch {args.batch}"))
    failed = False
    for method in args.methods:
        cmd = [sys.executable, __file__, "--child", method, *sys.argv[1:]]
        res = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if res.returncode != 0:
            print(f"{method}: the soak process failed (exit {res.returncode})")
            failed = True
            continue
        out = json.loads(res.stdout.strip().splitlines()[-1])
        grown, threshold, grows = growth(out["windows"], args.noise)
        print(f"\n## {method}: median {out['ms_per_step_median']} ms/step; RSS before the first step "
              f"{out['rss_before_mb']} MiB")
        print("| step | RSS MiB | ms/step (median of the window) |\n|---:|---:|---:|")
        for w in out["windows"]:
            print(f"| {w['step']} | {w['rss_mb']} | {w['ms_per_step']} |")
        verdict = "GROWS beyond" if grows else "no growth beyond"
        print(f"{method}: RSS change over the second half {grown:+.1f} MiB: {verdict} allocator noise "
              f"({threshold:.0f} MiB)")
        failed |= grows
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
